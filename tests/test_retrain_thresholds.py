"""RFM thresholds recomputed from the profiles in the real Redis, published only when they move."""

from __future__ import annotations

import uuid

import numpy as np
import pandas as pd
import redis

from models.population import read_population
from models.thresholds import refresh_thresholds
from segstream.keys import Keys
from segstream.settings import Settings
from streams.profile import Profile
from streams.thresholds import current_thresholds
from tests.conftest import save_profiles

WATERMARK = pd.Timestamp("2018-06-01", tz="UTC").timestamp()
DAY = 86_400.0


def _population(rng: np.random.Generator, n: int, spend_scale: float) -> list[Profile]:
    days_ago = rng.uniform(0, 600, n)
    spent = rng.gamma(2.0, spend_scale, n).round(2)
    return [
        Profile(f"c{uuid.uuid4().hex[:10]}", last_purchase=WATERMARK - d * DAY, orders=1, monetary=float(m))
        for d, m in zip(days_ago, spent, strict=True)
    ]


def _expected(profiles: list[Profile]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    frame = pd.DataFrame(
        {"recency": [(WATERMARK - p.last_purchase) / DAY for p in profiles], "monetary": [p.monetary for p in profiles]}
    )
    quantiles = frame.quantile([0.2, 0.4, 0.6, 0.8])
    return tuple(quantiles.recency.round(2)), tuple(quantiles.monetary.round(2))


def _refresh(settings: Settings, **options) -> object:
    client, keys = redis.Redis.from_url(settings.redis_address), Keys(settings.redis_prefix)
    return refresh_thresholds(settings, read_population(client, keys), WATERMARK, **options)


def test_thresholds_follow_the_population_within_a_tolerance(services: Settings) -> None:
    settings = services.model_copy(update={"redis_prefix": f"thr{uuid.uuid4().hex[:8]}"})
    client, keys = redis.Redis.from_url(settings.redis_address), Keys(settings.redis_prefix)
    rng = np.random.default_rng(11)
    population = _population(rng, 500, spend_scale=60.0)
    save_profiles(client, keys, [*population, Profile("reviews-only", reviews=1)])  # not scored: left out

    first = _refresh(settings)
    recency, monetary = _expected(population)
    assert first is not None and first.version == 1
    assert np.allclose(first.recency_days, recency, atol=0.011)
    assert np.allclose(first.monetary, monetary, atol=0.011)
    assert current_thresholds(settings) == first

    # a few more customers like the others: the quintiles barely move, nothing is republished
    save_profiles(client, keys, _population(rng, 20, spend_scale=60.0))
    assert _refresh(settings, tolerance=0.05) is None
    assert current_thresholds(settings).version == 1

    # big spenders arrive: the monetary quintiles move, a new version is published
    spenders = _population(rng, 500, spend_scale=300.0)
    save_profiles(client, keys, spenders)
    second = _refresh(settings, tolerance=0.05)
    assert second is not None and second.version == 2
    assert second.monetary[-1] > first.monetary[-1] * 1.5
