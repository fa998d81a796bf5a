"""The synthetic five-modality cohort: patients, renderers, files on disk and a preview sheet.

``generate_cohort(out_dir)`` writes X-ray (DICOM), CT (NIfTI), retina (PNG), pathology (JPEG)
and ECG (WFDB) studies with free-text reports and manifests; ``write_preview`` draws a contact
sheet of what was generated. One module per modality renders its studies
(``xray``, ``ct``, ``retina``, ``pathology``, ``ecg``); ``conditions`` decides who the
patients are and what they have.
"""
from m3bind.cohort.preview import write_preview
from m3bind.cohort.writer import CohortSummary, generate_cohort

__all__ = ["generate_cohort", "write_preview", "CohortSummary"]
