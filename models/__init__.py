"""Stage 3 of the data path: Redis -> models -> Redis (periodic CLV and ALS retraining).

Built so far (issue 5, unfinished): ``models.als`` (ALS recommendations and the popularity
baseline, on purchase counts), ``models.clv`` (BG/NBD + Gamma-Gamma on an RFM summary) and
``models.thresholds`` (R and M quintiles from the profiles in Redis, republished beyond a
tolerance). Not built yet: the retrain job that reads the profiles from Redis and writes scores,
recommendations and model versions back, its command line, and the model registry.
"""
