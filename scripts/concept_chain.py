"""Where does cross-modal retrieval break? Follow one concept along the binding chain.

M3Bind links, e.g., an ECG showing left ventricular hypertrophy to a radiograph showing
cardiomegaly only through text:
    ECG image -> ECG text encoder -> (binding) X-ray text encoder -> X-ray image.
For each link this prints the cosine between the concept's *directions* (mean embedding of
studies / reports with the finding minus the mean of those without) in the shared space:
  img~own txt     image direction vs the same modality's text direction
  own~other enc   the query modality's reports under its own vs the gallery's text encoder
  concept link    query-modality reports vs gallery-modality reports, both under the gallery encoder
  other txt~img   the gallery modality's text direction vs its image direction
  END             image direction of the query modality vs that of the gallery modality
Images come from the paired VALIDATION set (a diagnostic used while tuning never reads test),
reports from the training manifests.

Usage: python scripts/concept_chain.py OUTPUT_DIR/config.yaml [unbound]
"""
import sys

import torch
import torch.nn.functional as F

from m3bind.experiment import Experiment
from m3bind.eval.protocol import TUNING_SPLIT, embed_images, paired_studies
from m3bind.stages.artifacts import load_bound, prepare_bound

CHAINS = [(("ecg", "left ventricular hypertrophy"), ("xray", "cardiomegaly")),
          (("ct", "cardiomegaly"), ("xray", "cardiomegaly")),
          (("ecg", "left ventricular hypertrophy"), ("ct", "cardiomegaly")),
          (("ecg", "low qrs voltage"), ("ct", "pericardial effusion"))]


def direction(embeddings: torch.Tensor, has: list[bool]) -> torch.Tensor:
    mask = torch.tensor(has)
    return F.normalize(embeddings[mask].mean(0) - embeddings[~mask].mean(0), dim=0)


@torch.no_grad()
def main(config: str, unbound: bool) -> None:
    exp = Experiment.from_file(config)
    modalities = ["xray", "ct", "ecg"]
    bound = prepare_bound(exp, modalities) if unbound else load_bound(exp)
    for module in bound.values():
        module.eval()

    def image_dir(m, label):
        studies = paired_studies(exp, m, TUNING_SPLIT)
        return direction(embed_images(bound[m].encode_image, studies.images), [label in ls for ls in studies.labels])

    def text_dir(m, label, encoder):
        train = exp.studies(m, "train")
        with_, without = ([t for t, ls in zip(train.texts, train.labels) if (label in ls) == flag][:64]
                          for flag in (True, False))
        emb = bound[encoder].encode_texts(with_ + without)
        return direction(emb, [True] * len(with_) + [False] * len(without))

    for (qm, ql), (gm, gl) in CHAINS:
        q_img, g_img = image_dir(qm, ql), image_dir(gm, gl)
        q_own, q_other = text_dir(qm, ql, qm), text_dir(qm, ql, gm)
        g_own = text_dir(gm, gl, gm)
        print(f"{qm}:{ql} -> {gm}:{gl}: img~own txt {q_img @ q_own:.2f} | own~other enc {q_own @ q_other:.2f} | "
              f"concept link {q_other @ g_own:.2f} | other txt~img {g_own @ g_img:.2f} || END {q_img @ g_img:.2f}")


if __name__ == "__main__":
    main(sys.argv[1], unbound="unbound" in sys.argv[2:])
