import hypothesis.strategies as st

from helpers import Case

CASES = [
    Case("clip_by_global_norm", kwargs=dict(max_norm=1.0), hparams=dict(max_norm=st.floats(0.1, 10.0))),
]
