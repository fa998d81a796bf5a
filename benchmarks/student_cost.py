"""Seconds per forward+backward of a 32-text batch: built-in student vs all-MiniLM-L6-v2.

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
    builtin = build_student(StudentConfig(), TEXTS, shared_dim=256)
    minilm = build_student(StudentConfig(type="minilm"), TEXTS, shared_dim=256)
    a, b = cost(builtin), cost(minilm)
    params = lambda m: sum(p.numel() for p in m.parameters()) / 1e6
    print(f"built-in student: {params(builtin):.1f} M parameters, {a:.3f} s per 32-text step")
    print(f"MiniLM student:   {params(minilm):.1f} M parameters, {b:.3f} s per 32-text step ({b / a:.1f}x)")
