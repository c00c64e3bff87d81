"""Irises: the iris code template and its distances (``template``), the compiled
masked-Hamming kernels (``_kernel``) and the matcher with its packed per-partition codes
and sketch shortlist (``matcher``). May import the rest of ``matcher/``, numpy and numba;
no other modality."""
