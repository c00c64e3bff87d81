"""Faces: the embedding template (``template``), the exact FAISS gallery per partition
(``gallery``) and the matcher the engine searches through (``matcher``). May import the
rest of ``matcher/`` (errors, calibration, codec, base) and faiss; no other modality."""
