"""How close can ONE student get to each teacher? Class prototypes, compared.

For each modality, the bound teacher's class prototypes (expert prompts, renormalised) are
compared with (a) the student's and (b) the mean of all teachers' prototype embeddings, which is
what eq. 7's L_KD (every teacher on every text) drives a perfect student to. Printed: mean
prototype cosine, the mean cosine between classes (how close the classes sit), and per class the
cosine of the residuals (prototype minus the modality's mean prototype), where the class
information lives. Reads only prompts: no study of any split.

Usage: python scripts/student_ceiling.py OUTPUT_DIR/config.yaml
"""
import sys

import torch
import torch.nn.functional as F

from m3bind.eval.protocol import class_prompts, modality_classes
from m3bind.experiment import Experiment
from m3bind.models.bound import M3Bind
from m3bind.stages.artifacts import load_bound, model_dir


def prototypes(encode, prompts: dict, classes: list) -> torch.Tensor:
    return torch.stack([F.normalize(encode(prompts[c]).mean(0), dim=0) for c in classes])


def off_diagonal(p: torch.Tensor) -> float:
    return float(((p @ p.T).sum() - len(p)) / (len(p) * (len(p) - 1)))


def residual_cosines(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    return [round(x, 2) for x in F.cosine_similarity(a - a.mean(0), b - b.mean(0), dim=1).tolist()]


@torch.no_grad()
def main(config: str) -> None:
    exp = Experiment.from_file(config)
    teachers = load_bound(exp)
    final = M3Bind.from_pretrained(model_dir(exp)).to(exp.device)
    for module in [*teachers.values(), final]:
        module.eval()
    for m, teacher in teachers.items():
        classes = modality_classes(exp, m)
        prompts = class_prompts(exp, m, classes, "expert")
        own = prototypes(teacher.encode_texts, prompts, classes)
        student = prototypes(final.encode_texts, prompts, classes)
        mean_teacher = prototypes(lambda texts: torch.stack([t.encode_texts(texts) for t in teachers.values()]).mean(0),
                                  prompts, classes)
        print(f"{m}: classes' mean cosine teacher {off_diagonal(own):.3f}, student {off_diagonal(student):.3f} | "
              f"student~teacher {F.cosine_similarity(own, student).mean():.3f} (residuals "
              f"{residual_cosines(own, student)}) | all-teacher mean~teacher "
              f"{F.cosine_similarity(own, mean_teacher).mean():.3f} (residuals {residual_cosines(own, mean_teacher)})")


if __name__ == "__main__":
    main(sys.argv[1])
