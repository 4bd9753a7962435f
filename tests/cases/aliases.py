"""Named optimizers (``optlab/_aliases.py``): one case per optimizer, ``kind="optimizer"``."""

import hypothesis.strategies as st

from helpers import Case

LR = st.floats(1e-4, 0.1)
B1 = st.floats(0.0, 0.99)
B2 = st.floats(0.5, 0.999)
WD = st.floats(0.0, 0.1)


def _opt(name, kwargs=None, hparams=None, **rest):
    return Case(
        name,
        kwargs={"learning_rate": 1e-2, **(kwargs or {})},
        hparams={"learning_rate": LR, **(hparams or {})},
        kind="optimizer",
        **rest,
    )


CASES = [
    _opt("sgd"),
    _opt("sgd", dict(momentum=0.9, nesterov=True), dict(momentum=B1), id="nesterov"),
    _opt("adam", hparams=dict(b1=B1, b2=B2)),
    _opt("adamw", hparams=dict(b1=B1, b2=B2, weight_decay=WD)),
    _opt("amsgrad", hparams=dict(b1=B1, b2=B2, weight_decay=WD)),
    _opt("diffgrad", hparams=dict(b1=B1, b2=B2, weight_decay=WD)),
    _opt(
        "adamp",
        dict(weight_decay=1e-2),
        dict(b1=B1, b2=B2, delta=st.floats(0.0, 1.0), wd_ratio=st.floats(0.0, 1.0)),
        static_args=("channel_axis",),
    ),
    _opt(
        "sgdp",
        dict(weight_decay=1e-2),
        dict(momentum=B1, delta=st.floats(0.0, 1.0)),
        static_args=("channel_axis",),
    ),
    _opt(
        "ademamix",
        hparams=dict(
            b1=B1, b2=B2, b3=st.floats(0.9, 0.9999), alpha=st.floats(0.0, 8.0), weight_decay=WD
        ),
    ),
    _opt(
        "ademamix",
        dict(b3_warmup=10, alpha_warmup=10),
        id="warmup",
        static_args=("b3_warmup", "alpha_warmup"),
    ),
    _opt("mars_adamw", hparams=dict(b1=B1, b2=B2, gamma=st.floats(0.0, 0.1), weight_decay=WD)),
    _opt("grams", hparams=dict(b1=B1, b2=B2, weight_decay=WD)),
    _opt("cautious_adamw", hparams=dict(b1=B1, b2=B2, weight_decay=WD)),
    _opt("cautious_lion", hparams=dict(b1=B1, b2=B2, weight_decay=WD)),
    _opt("lion", hparams=dict(b1=B1, b2=B2, weight_decay=WD)),
    _opt("signum", hparams=dict(b1=B1, weight_decay=WD)),
    _opt("lamb", hparams=dict(b1=B1, b2=B2, weight_decay=WD)),
    _opt(
        "lars", dict(weight_decay=1e-4), dict(momentum=B1, trust_coefficient=st.floats(1e-3, 1.0))
    ),
    _opt(
        "muon",
        dict(muon_mask=__import__("optlab").muon_hidden_mask),
        id="hidden_mask",
        static_args=("muon_mask", "ns_steps"),
    ),
    _opt("muon", hparams=dict(beta=B1, weight_decay=WD), static_args=("ns_steps",)),
    _opt(
        "muon",
        dict(nesterov=False, weight_decay=1e-2),
        static_args=("ns_steps",),
        tree="matrix",
        id="matrix",
    ),
    _opt("sinkgd", hparams=dict(weight_decay=WD), static_args=("num_iters",)),
    _opt(
        "adafactor",
        dict(min_dim_size_to_factor=2),
        static_args=("min_dim_size_to_factor", "decay_offset"),
    ),
    _opt(
        "adafactor",
        dict(min_dim_size_to_factor=2, momentum=0.9, weight_decay_rate=1e-3),
        static_args=("min_dim_size_to_factor", "decay_offset"),
        id="momentum",
    ),
    _opt("sgd_sai", hparams=dict(b1=B1, weight_decay=WD)),
    _opt(
        "sophia",
        dict(update_interval=2),
        dict(b1=B1, b2=B2, gamma=st.floats(1e-3, 1.0)),
        extra_args=("hvp_fn",),
    ),
    _opt(
        "adahessian",
        hparams=dict(b1=B1, b2=B2, hessian_power=st.floats(0.0, 1.0)),
        extra_args=("hvp_fn",),
    ),
    # Issue 12 (part A): plain named optimizers (registry table)
    _opt("adopt", hparams=dict(b1=B1, b2=B2, weight_decay=WD)),
    _opt("yogi", hparams=dict(b1=B1, b2=B2)),
    _opt("adamomentum", hparams=dict(b1=B1, b2=B2, weight_decay=WD)),
    _opt("qhm", hparams=dict(b1=B1, nu=st.floats(0.0, 1.0), weight_decay=WD)),
    _opt("qhadam", hparams=dict(b1=B1, b2=B2, nu1=st.floats(0.0, 1.0), weight_decay=WD)),
    _opt("ano", hparams=dict(b1=B1, b2=B2, weight_decay=WD)),
    _opt("nag_gs", hparams=dict(mu=st.floats(0.1, 2.0), gamma=st.floats(0.5, 2.0))),
    _opt("lion_kappa", hparams=dict(b1=B1, b2=B2, weight_decay=WD)),
    _opt("scion", hparams=dict(momentum=B1, scale=st.floats(0.1, 10.0)), static_args=("ns_steps",)),
    _opt("swan", hparams=dict(weight_decay=WD), static_args=("ns_steps",)),
    _opt(
        "m_fac",
        dict(num_grads=3),
        hparams=dict(damping=st.floats(1e-3, 1.0), momentum=B1),
        static_args=("num_grads",),
    ),
    _opt("oasis", hparams=dict(b2=B2), extra_args=("hvp_fn",), static_args=("seed",)),
]
