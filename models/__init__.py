"""Stage 3 of the data path: Redis -> models -> Redis (periodic CLV and ALS retraining).

Not built yet: issue 5 adds the retrain job here.
"""
