"""Properties of the loader and the timeline, for many inputs (hypothesis)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from replay.history import TICK
from replay.olist import OLIST_FILES, load_olist
from streams.profile import Profile, _text
from tests.conftest import EDGE


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1))
def test_row_order_of_the_files_does_not_change_the_events(seed: int, tmp_path_factory) -> None:
    """Shuffling every file's rows gives the same events in the same order (deterministic replay)."""
    out = tmp_path_factory.mktemp("shuffled")
    rng = np.random.default_rng(seed)
    for name in OLIST_FILES.values():
        source = EDGE / name
        if not source.exists():
            continue
        frame = pd.read_csv(source, dtype=str, keep_default_na=False, encoding="utf-8-sig")
        frame.iloc[rng.permutation(len(frame))].to_csv(out / name, index=False)
    expected = list(load_olist(EDGE).events())
    shuffled = list(load_olist(out).events())
    # Exact duplicates (a repeated order row, a repeated review) keep one copy whichever comes first.
    assert shuffled == expected
    shutil.rmtree(out)


@settings(max_examples=25, deadline=None)
@given(tick_seconds=st.integers(60, 40 * 86_400) | st.sampled_from([80, 3_600, 86_400]))
def test_every_tick_is_a_watermark(tick_seconds: int) -> None:
    timeline = load_olist(EDGE).timeline(tick_seconds=tick_seconds)
    times, kinds = timeline.time_ns, timeline.kind
    assert (np.diff(times) >= 0).all()
    ticks = np.flatnonzero(kinds == TICK)
    assert len(ticks) >= 1
    later_minimum = np.minimum.accumulate(times[::-1])[::-1]  # min of times[p:] for every p
    assert (later_minimum[ticks] >= times[ticks]).all()
    assert (times[ticks] % (tick_seconds * 1_000_000_000) == 0).all()
    # one tick per boundary crossed between the first and the last event
    events = times[kinds != TICK]
    step = tick_seconds * 1_000_000_000
    assert len(ticks) == events.max() // step - (events.min() - 1) // step


# product ids and categories carry no tabs or line breaks (the schema refuses them): a purchase
# day is stored tab-separated
_NO_TABS = st.text(alphabet=st.characters(blacklist_characters="\t\r\n"), max_size=10)


@given(st.lists(_NO_TABS, max_size=5), st.tuples(st.floats(allow_nan=False), st.text(max_size=10)))
def test_profile_fields_text_is_compact_json(strings: list[str], pair: tuple[float, str]) -> None:
    assert _text(strings) == (json.dumps(strings, separators=(",", ":")) if strings else "")  # []: the default
    assert _text(pair) == json.dumps(pair, separators=(",", ":"))
    purchases = {s: [1.5, strings, strings] for s in strings}
    profile = Profile("u", purchases=purchases, churn_reasons=strings[:2], last_review=pair)
    assert Profile.from_redis(profile.changed_fields()) == profile
