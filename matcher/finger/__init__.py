"""Fingerprints: the minutiae template (``template``), MCC cylinders (``mcc``, its compiled
kernel ``_kernel``), the FAISS binary index of MCC index codes that shortlists large
galleries (``index``), ISO/IEC 19794-2:2005 records (``iso19794``) and the matcher
(``matcher``). May import the rest of ``matcher/``, numpy, numba, faiss and OpenCV
(geometry only); no other modality."""
