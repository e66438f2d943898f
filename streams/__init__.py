"""Stage 2 of the data path: topics -> Redis (Faust agents keeping customer profiles live).

Not built yet: issue 4 adds the Faust app, its agents and the Redis profile state here.
"""
