"""The named-optimizer registry: ``optlab.available``, ``optlab.get``, ``optlab.describe``."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import optax
import pytest

import optlab
from helpers import fixed_params, quadratic_loss, run_optimizer, tree_allclose
from optlab import _aliases, _registry

NAMES = sorted(_aliases.__all__)


def test_available_lists_every_named_optimizer_with_description_and_paper():
    infos = optlab.available()
    names = [i.name for i in infos]
    assert names == sorted(names)
    assert set(NAMES) <= set(names)
    for info in infos:
        assert info.description and not info.description.endswith(":"), info.name
        assert re.search(r"\((19|20)\d\d\)$", info.paper), (info.name, info.paper)
        line = str(info)
        assert info.name in line and info.paper in line and "\n" not in line
        assert optlab.get is not None and callable(info.factory)


def test_description_defaults_to_first_docstring_line():
    info = {i.name: i for i in optlab.available()}["adamw"]
    assert info.description == optlab.adamw.__doc__.strip().splitlines()[0]
    assert info.factory is optlab.adamw


@pytest.mark.parametrize("name", [n for n in NAMES if n != "dpsgd"])  # dpsgd: test_privacy
def test_get_builds_the_same_optimizer(name):
    hvp_fn = lambda q, v: jax.jvp(jax.grad(quadratic_loss), (q,), (v,))[1]  # noqa: E731
    extra = (lambda p: {"hvp_fn": hvp_fn}) if name in ("sophia", "adahessian", "oasis") else None
    if name in ("sps", "alr_smag"):  # Polyak-type steps read the loss
        extra = lambda p: {"value": quadratic_loss(p)}  # noqa: E731
    params = fixed_params()
    p1, _, _ = run_optimizer(optlab.get(name, learning_rate=1e-2), quadratic_loss, params, 2, extra)
    p2, _, _ = run_optimizer(getattr(optlab, name)(1e-2), quadratic_loss, params, 2, extra)
    tree_allclose(p1, p2, rtol=0, atol=0)


def test_get_passes_keyword_hyperparameters():
    tx = optlab.get("sgd", learning_rate=0.5, momentum=0.9)
    params = {"x": jnp.array([1.0])}
    updates, state = tx.update(params, tx.init(params), params)
    updates, _ = tx.update(params, state, params)
    assert float(updates["x"][0]) == pytest.approx(-0.5 * 1.9)


def test_get_unknown_name_suggests_close_matches():
    with pytest.raises(KeyError, match=r"unknown optimizer 'adamww'.*Did you mean 'adamw'"):
        optlab.get("adamww", learning_rate=1e-3)
    with pytest.raises(KeyError, match=r"'sophya'.*'sophia'.*optlab\.available\(\)"):
        optlab.get("sophya", learning_rate=1e-3)
    with pytest.raises(KeyError, match=r"unknown optimizer 'zzz'\. `optlab\.available\(\)`"):
        optlab.get("zzz", learning_rate=1e-3)


def test_table_lists_exactly_the_named_optimizers():
    """One entry per function of ``_aliases.__all__``, each the public ``optlab.<name>``."""
    assert sorted(_registry._TABLE) == NAMES
    assert all(factory is getattr(optlab, name) for name, (factory, _) in _registry._TABLE.items())


def _ratio(text: str) -> float:
    return float(re.search(r"state bytes per parameter byte: ([0-9.]+)", text).group(1))


def test_describe_adamw_returns_chain_and_two_copies_of_state(capsys):
    text = optlab.describe("adamw")
    assert capsys.readouterr().out == ""  # returns, prints nothing: a REPL shows it once
    assert repr(text) == str(text)  # ... laid out, not as an escaped string
    assert "adamw" in text and "Decoupled Weight Decay Regularization (2019)" in text
    stages = re.findall(r"^\s+\d+\. (.+)$", text, flags=re.M)
    assert stages == ["scale_by_adam", "add_decayed_weights", "scale_by_learning_rate"]
    assert _ratio(text) == pytest.approx(2.0)


@pytest.mark.parametrize(
    "name,kwargs,ratio",
    [
        ("sgd", {}, 0.0),
        ("sgd", {"momentum": 0.9}, 1.0),
        ("amsgrad", {}, 3.0),
        ("lion", {}, 1.0),
        ("sinkgd", {}, 0.0),
        ("sophia", {}, 2.0),
        ("muon", {}, 1.0),  # momentum on the 256x256 matrix; AdamW's two copies only on the bias
    ],
)
def test_describe_state_ratio(name, kwargs, ratio):
    assert _ratio(optlab.describe(name, **kwargs)) == pytest.approx(ratio, abs=0.01)


def test_describe_adafactor_is_sublinear():
    params = {"w": jax.ShapeDtypeStruct((512, 512), jnp.float32)}
    assert _ratio(optlab.describe("adafactor", params=params)) < 0.01
    assert _ratio(optlab.describe("adamw", params=params)) == pytest.approx(2.0)


def test_describe_names_wrapped_and_nested_stages():
    text = optlab.describe("cautious_adamw")
    assert "cautious(scale_by_adam)" in text
    assert "radial_projection(scale_by_adam)" in optlab.describe("adamp")
    assert "scale_by_sophia(hutchinson_diag_hessian)" in optlab.describe("sophia")
    muon = optlab.describe("muon")
    assert re.search(
        r"1\. partition\n +1\. muon\n +1\. trace\n +2\. orthogonalize\n"
        r" +3\. scale_by_muon_shape",
        muon,
    ), muon
    assert re.search(r"2\. adam\n +1\. scale_by_adam", muon), muon
    lars = optlab.describe("lars", trust_ratio_mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p))
    assert "masked(scale_by_trust_ratio)" in lars


def test_describe_transformation_and_bf16_params():
    tx = optlab.adamw(1e-3, mu_dtype=jnp.bfloat16)
    params = {"w": jax.ShapeDtypeStruct((64, 64), jnp.float32)}
    assert _ratio(optlab.describe(tx, params=params)) == pytest.approx(1.5, abs=0.01)
    plain = optlab.describe(optax.sgd(0.1, momentum=0.9), params=params)
    assert "transform: chain" in plain and _ratio(plain) == pytest.approx(1.0)
    text = optlab.describe(optlab.scale_by_sophia())
    assert "transform: ScaleBySophiaState" in text  # a bare transform: its state's type


def test_describe_reads_stages_of_any_named_chain():
    tx = optax.named_chain(
        ("my stage", optax.scale(2.0)),
        (
            "inner",
            optax.named_chain(
                ("lion", optlab.scale_by_lion()), ("decay", optax.add_decayed_weights(0.1))
            ),
        ),
    )
    text = optlab.describe(tx)
    assert re.search(r"1\. my stage\n +2\. inner\n +1\. lion\n +2\. decay", text), text
    params = {"x": jnp.ones(3)}
    updates, _ = tx.update(params, tx.init(params), params)  # still an optax.chain
    tree_allclose(updates, {"x": jnp.full(3, 1.1)})


def test_get_forwards_positional_arguments():
    params = {"x": jnp.array([1.0, -2.0])}
    for tx, ref in [
        (optlab.get("lion", 3e-4), optax.lion(3e-4)),
        (optlab.get("sgd", 0.5, 0.9), optax.sgd(0.5, 0.9)),
    ]:
        state, ref_state = tx.init(params), ref.init(params)
        for _ in range(2):
            u, state = tx.update(params, state, params)
            r, ref_state = ref.update(params, ref_state, params)
        tree_allclose(u, r, rtol=0, atol=0)


def test_adam_is_registered_and_matches_optax():
    assert "adam" in [i.name for i in optlab.available()]
    params = {"x": jnp.array([1.0, -2.0, 0.5])}
    tx, ref = optlab.get("adam", 1e-2, b1=0.8), optax.adam(1e-2, b1=0.8)
    state, ref_state = tx.init(params), ref.init(params)
    for i in range(5):
        g = {"x": params["x"] * (i + 1.0)}
        u, state = tx.update(g, state, params)
        r, ref_state = ref.update(g, ref_state, params)
        tree_allclose(u, r, rtol=1e-6, atol=0)


def test_wrapped_names_build_the_wrapper_around_the_base():
    """``"sam-adamw"`` is ``optlab.sam(optlab.adamw(...))``; keywords split by signature."""
    loss = quadratic_loss
    params = fixed_params()
    grad_fn = jax.grad(loss)
    extra = lambda p: {"grad_fn": grad_fn}  # noqa: E731
    a = optlab.get("sam-adamw", 1e-2, rho=0.1, weight_decay=0.01)
    b = optlab.sam(optlab.adamw(1e-2, weight_decay=0.01), rho=0.1)
    p1, _, _ = run_optimizer(a, loss, params, 3, extra)
    p2, _, _ = run_optimizer(b, loss, params, 3, extra)
    tree_allclose(p1, p2, rtol=0, atol=0)
    c = optlab.get("Lookahead-SGD", learning_rate=0.1, momentum=0.9, sync_period=3)
    d = optlab.lookahead(optlab.sgd(0.1, momentum=0.9), sync_period=3)
    p1, _, _ = run_optimizer(c, loss, params, 4)
    p2, _, _ = run_optimizer(d, loss, params, 4)
    tree_allclose(p1, p2, rtol=0, atol=0)


def test_names_are_case_insensitive():
    text = optlab.describe("ADAMW")
    assert text.startswith("adamw ")
    assert optlab.describe("SAM-AdamW").startswith("sam-adamw ")


def test_describe_wrapped_name_and_errors_name_the_function_called():
    text = optlab.describe("sam-adamw", rho=0.1)
    assert text.startswith("sam-adamw") and "optlab.sam around it" in text
    with pytest.raises(KeyError, match=r"`optlab\.describe`: 'sam' is a wrapper.*'sam-adamw'"):
        optlab.describe("sam")
    with pytest.raises(KeyError, match=r"`optlab\.get`: 'sam' is a wrapper"):
        optlab.get("sam", learning_rate=0.1)
    with pytest.raises(KeyError, match=r"`optlab\.describe`: unknown optimizer 'sam-adamww'"):
        optlab.describe("sam-adamww")
    with pytest.raises(TypeError, match=r"`optlab\.get`: `name` must be a string.*None"):
        optlab.get(None)
    with pytest.raises(TypeError, match=r"`optlab\.describe`: `tx_or_name` must be a string.*42"):
        optlab.describe(42)


def test_available_has_a_readable_repr():
    text = repr(optlab.available())
    lines = text.splitlines()
    assert len(lines) == len(optlab.available()) and "factory=" not in text
    assert any(line.startswith("adamw ") for line in lines)
