"""Seconds per forward+backward of a 32-text batch: the built-in students (scratch BERT; frozen
all-MiniLM-L6-v2 under a trainable layer, its sentence vectors cached after the warm-up, as in
repeated epochs) vs a fine-tuned all-MiniLM-L6-v2.

    python benchmarks/student_cost.py
"""
from __future__ import annotations

import time


from m3bind.config import StudentConfig
from m3bind.models.student import build_student

TEXTS = ["Findings: moderate cardiomegaly, which may reflect left ventricular hypertrophy. No pleural effusion. "
         "Impression: enlarged heart."] * 32


def cost(student, repeats: int = 5) -> float:
    student.train()
    student.encode_texts(TEXTS).sum().backward()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        student.zero_grad()
        student.encode_texts(TEXTS).sum().backward()
    return (time.perf_counter() - start) / repeats


if __name__ == "__main__":
    students = {"built-in, scratch BERT": build_student(StudentConfig(backbone="scratch"), TEXTS, shared_dim=256),
                "built-in, frozen MiniLM": build_student(StudentConfig(backbone="minilm"), TEXTS, shared_dim=256),
                "fine-tuned MiniLM": build_student(StudentConfig(type="minilm"), TEXTS, shared_dim=256)}
    seconds = {name: cost(student) for name, student in students.items()}
    base = seconds["built-in, scratch BERT"]
    for name, student in students.items():
        trained = sum(p.numel() for p in student.parameters() if p.requires_grad) / 1e6
        print(f"{name:24s} {trained:5.2f} M trained parameters, {seconds[name]:.3f} s per 32-text step "
              f"({seconds[name] / base:.2f}x the scratch student)")
