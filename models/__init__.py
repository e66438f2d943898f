"""Stage 3 of the data path: Redis -> models -> Redis (periodic CLV and ALS retraining).

``models.retrain`` is the job (``segstream retrain``): it reads the profiles
(``models.population``), fits CLV (``models.clv``: BG/NBD + Gamma-Gamma on the lifetimes RFM
summary) and recommendations (``models.als``: implicit ALS, with seed strategies), republishes
RFM thresholds and BG/NBD parameters (``models.thresholds``), writes scores and lists back behind
one atomic switch, and records the run in the registry (``models.registry``).
"""
