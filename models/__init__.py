"""Stage 3 of the data path: Redis -> models -> Redis (periodic CLV and ALS retraining).

Built so far (issue 5, unfinished): ``models.als`` (ALS recommendations and the popularity
baseline, on purchase counts) and ``models.clv`` (BG/NBD + Gamma-Gamma on an RFM summary). Not built
yet: the retrain job that reads the profiles from Redis and writes scores, recommendations and
model versions back, and the model registry.
"""
