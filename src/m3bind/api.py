"""The Python API: load a bound model and embed studies and texts in the shared space.

    from m3bind.api import M3Bind
    model = M3Bind.from_pretrained("m3bind-demo/model")
    xr = model.encode_images("xray", ["study1.dcm", "study2.dcm"])
    ecg = model.encode_images("ecg", ["rec1.hea"])
    text = model.encode_texts(["moderate cardiomegaly"])
    model.similarity(xr, ecg)
"""
from m3bind.models.bound import M3Bind

__all__ = ["M3Bind"]
