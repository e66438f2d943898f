"""The CLV models on generated purchase histories with known structure, and their refusals."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from lifetimes.utils import summary_data_from_transaction_data

from models.clv import ClvFitError, ClvModel, degenerate_reason

START = pd.Timestamp("2017-01-01")
END = pd.Timestamp("2018-06-30")


def _transactions(customers: int, repeat_share: float, seed: int = 3) -> pd.DataFrame:
    """Purchases of customers who arrive over a year; a share of them come back at random times."""
    rng = np.random.default_rng(seed)
    rows = []
    for customer in range(customers):
        first = START + pd.Timedelta(days=int(rng.integers(0, 365)))
        spend = rng.gamma(4.0, 30.0)  # each customer's own mean spend
        days = [first]
        if rng.random() < repeat_share:
            for _ in range(int(rng.integers(1, 6))):
                days.append(first + pd.Timedelta(days=int(rng.integers(1, (END - first).days))))
        for day in days:
            rows.append((customer, day, round(float(rng.gamma(8.0, spend / 8.0)), 2)))
    return pd.DataFrame(rows, columns=["customer", "date", "amount"])


def _summary(customers: int, repeat_share: float) -> pd.DataFrame:
    return summary_data_from_transaction_data(
        _transactions(customers, repeat_share),
        "customer",
        "date",
        monetary_value_col="amount",
        observation_period_end=END,
    )


def test_fit_and_score_on_a_history_with_repeat_buyers() -> None:
    summary = _summary(2_000, repeat_share=0.3)
    model = ClvModel(horizon_days=90).fit(summary)
    assert model.repeat_buyers_ == int(((summary.frequency > 0) & (summary.monetary_value > 0)).sum())
    assert abs(model.frequency_monetary_corr_) < 0.2  # spend drawn independently of frequency
    scores = model.score(summary)
    assert np.isfinite(scores.to_numpy()).all()
    assert scores.p_alive.between(0, 1).all()
    # one-time buyers are alive for sure to BG/NBD; a repeat buyer silent for long is less so
    assert (scores.p_alive[summary.frequency == 0] == 1).all()
    repeat = summary.frequency > 0
    silent = summary[repeat].eval("T - recency").sort_values()
    assert scores.p_alive[silent.index[-50:]].mean() < scores.p_alive[silent.index[:50]].mean()
    # more repeat purchases in the past, more expected in the future (same age and recency rank)
    assert scores.expected_purchases[repeat].corr(summary.frequency[repeat], method="spearman") > 0.3
    assert (scores.clv >= 0).all() and scores.clv[repeat].mean() > scores.clv[~repeat].mean()


def test_too_few_repeat_buyers_is_refused() -> None:
    summary = _summary(300, repeat_share=0.02)
    with pytest.raises(ClvFitError, match="repeat buyers"):
        ClvModel(min_repeat_buyers=20).fit(summary)


def test_a_fit_that_does_not_converge_is_refused() -> None:
    # everyone bought on the same 31 days, the last one today: no penalty, no finite optimum
    summary = pd.DataFrame(
        {"frequency": [30.0] * 50, "recency": [500.0] * 50, "T": [500.0] * 50, "monetary_value": [10.0] * 50}
    )
    with pytest.raises(ClvFitError, match="did not converge"):
        ClvModel(penalizer=0.0, fallback_penalizer=0.0).fit(summary)


def test_the_penalized_fallback_is_used_only_when_the_plain_fit_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    from lifetimes.datasets import load_cdnow_summary_data_with_monetary_value

    summary = load_cdnow_summary_data_with_monetary_value()
    plain = ClvModel().fit(summary)  # converges without a penalty (the papers' fit)
    assert plain.penalizer_ == 0.0
    real_fit = ClvModel._fit

    def failing_without_penalty(summary, repeat, penalizer, model="bgnbd"):
        if penalizer == 0.0:
            raise ClvFitError("the fit did not converge: ConvergenceError: planted")
        return real_fit(summary, repeat, penalizer, model)

    monkeypatch.setattr(ClvModel, "_fit", staticmethod(failing_without_penalty))
    fallback = ClvModel(fallback_penalizer=0.001).fit(summary)
    assert fallback.penalizer_ == 0.001 and fallback.bgnbd_params_ != plain.bgnbd_params_
    with pytest.raises(ClvFitError, match="planted"):
        ClvModel(fallback_penalizer=0.0).fit(summary)


def test_a_degenerate_fit_is_refused() -> None:
    model = ClvModel().fit(_summary(2_000, repeat_share=0.3))
    assert degenerate_reason(model.bgnbd_params_, model.gamma_gamma_params_) is None
    assert "q = 0.5 <= 1" in degenerate_reason(model.bgnbd_params_, dict(model.gamma_gamma_params_, q=0.5))
    assert "BG/NBD r = 0.0005 < 0.001" in degenerate_reason(
        dict(model.bgnbd_params_, r=5e-4), model.gamma_gamma_params_
    )


@pytest.mark.parametrize(
    ("model", "names"), [("modified_bgnbd", ["r", "alpha", "a", "b"]), ("pareto_nbd", ["r", "alpha", "s", "beta"])]
)
def test_the_rival_purchase_models_fit_the_same_summary_reproducibly(model: str, names: list[str]) -> None:
    summary = _summary(2_000, repeat_share=0.3)
    first, second = (ClvModel(model=model).fit(summary) for _ in range(2))
    assert list(first.purchase_params_) == names
    assert first.purchase_params_ == second.purchase_params_  # lifetimes' random Pareto/NBD start is fixed
    assert first.bgnbd_params_ is None  # no closed-form P(alive) for the stream
    scores = first.score(summary)
    assert np.isfinite(scores.to_numpy()).all() and scores.p_alive.between(0, 1).all()
    bgnbd = ClvModel().fit(summary).score(summary)
    # on the same data the models agree on who buys most (they differ in how buyers drop out)
    assert scores.expected_purchases.corr(bgnbd.expected_purchases, method="spearman") > 0.9


def test_an_unknown_purchase_model_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown CLV model 'bgnbdx'"):
        ClvModel(model="bgnbdx")
