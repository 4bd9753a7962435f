"""Generate the example notebooks of ``notebooks/`` (run: ``python3 notebooks/make_notebooks.py``).

The ``.ipynb`` files are written from the cell sources below, without outputs, so that
they stay reviewable as text; ``tests/test_notebooks.py`` checks that the files match
this script and executes each of them top to bottom. Edit the notebooks here, then
rerun the script.

* ``optimizer_zoo.ipynb``: named optimizers on the Rosenbrock and Rastrigin functions,
  a learning-rate sweep per optimizer (vmapped), trajectories and loss curves.
* ``sam_vs_sgd.ipynb``: SAM vs SGD on a valley of minima whose sharpness varies,
  sharpness measured with ``optlab.sharpness_diagnostics`` and checked against the
  Hessian.
* ``averaging_digits.ipynb``: SWA and an EMA of the weights (``optlab.swa``,
  ``optlab.ema_params``, ``optlab.averaged_params``) on scikit-learn's digits with a
  Flax NNX model and ``nnx.Optimizer``.
* ``schedules.ipynb``: plots of every ``optlab`` schedule, and parameter-free methods
  (DoG, Prodigy, schedule-free AdamW) untuned vs tuned AdamW on digits.
* ``diloco.ipynb``: DiLoCo vs synchronous data-parallel AdamW on digits with 4 replicas
  simulated by ``vmap``: accuracy vs bytes communicated, top-k with error feedback.
"""

from __future__ import annotations

import sys
import textwrap
import tomllib
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent
# The distribution name and the repository's address are written once, in pyproject.toml.
_PROJECT = tomllib.loads((HERE.parent / "pyproject.toml").read_text())["project"]
DISTRIBUTION = _PROJECT["name"]  # "optlab-jax" (the import name is `optlab`)
REPO_URL = _PROJECT["urls"]["Repository"]
GITHUB_REPO = REPO_URL.removeprefix("https://github.com/")  # for the "Open in Colab" badges


def _md(text: str):
    return new_markdown_cell(textwrap.dedent(text).strip())


def _code(text: str):
    return new_code_cell(textwrap.dedent(text).strip())


def _badge(filename: str, title: str, intro: str):
    url = f"https://colab.research.google.com/github/{GITHUB_REPO}/blob/main/notebooks/{filename}"
    badge = f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({url})"
    return new_markdown_cell(f"{badge}\n\n# {title}\n\n" + textwrap.dedent(intro).strip())


def _install(packages: str = f'"{DISTRIBUTION}[bench] @ git+{REPO_URL}"'):
    return _code(
        f"""
        # Install optlab only where it is missing (e.g. on Colab); skipped when it is importable.
        try:
            import optlab
        except ImportError:
            %pip install -q {packages}
            import optlab
        """
    )


# ---------------------------------------------------------------------------
# optimizer_zoo.ipynb
# ---------------------------------------------------------------------------


def optimizer_zoo():
    return [
        _badge(
            "optimizer_zoo.ipynb",
            "optlab optimizer zoo: Rosenbrock and Rastrigin",
            """
            Named optimizers of optlab (`optlab.get(name, learning_rate=...)`) on two classic
            2-D test functions:

            * **Rosenbrock** `(1 - x)^2 + 100 (y - x^2)^2`: a curved, badly conditioned
              valley with one minimum at `(1, 1)`;
            * **Rastrigin** `20 + sum(p^2 - 10 cos(2 pi p))`: a bowl covered in local minima,
              the global one at `(0, 0)`.

            For each optimizer we sweep the learning rate over a log grid in one vmapped,
            jitted run, keep the one with the lowest loss over the last 100 steps (its worst
            value there, so runs still oscillating lose), and plot its trajectory.
            Everything runs on CPU in well under a minute.
            """,
        ),
        _install(),
        _code(
            """
            import time

            import jax
            import jax.numpy as jnp
            import matplotlib.pyplot as plt
            import numpy as np
            import optax
            import optlab

            _t0 = time.perf_counter()
            print("optlab", optlab.__version__, "| jax", jax.__version__, "| devices", jax.devices())
            print(len(optlab.available()), "named optimizers:", ", ".join(i.name for i in optlab.available()))
            """
        ),
        _md(
            """
            ## The test functions

            Parameters are one vector `p` of shape `(2,)`. Starting points are away from the
            minima: Rosenbrock from `(-1.5, 2)`, across the valley; Rastrigin from
            `(-2.6, 3.3)`, several local minima away from the global one.
            """
        ),
        _code(
            """
            def rosenbrock(p):
                return (1.0 - p[0]) ** 2 + 100.0 * (p[1] - p[0] ** 2) ** 2


            def rastrigin(p):
                return 20.0 + jnp.sum(p**2 - 10.0 * jnp.cos(2.0 * jnp.pi * p))


            PROBLEMS = {
                # name: (loss, start, global minimum, plot window)
                "rosenbrock": (rosenbrock, jnp.array([-1.5, 2.0]), (1.0, 1.0), ((-2.0, 2.0), (-1.0, 3.0))),
                "rastrigin": (rastrigin, jnp.array([-2.6, 3.3]), (0.0, 0.0), ((-4.0, 4.0), (-4.0, 4.0))),
            }
            """
        ),
        _md(
            """
            ## Optimizers and the learning-rate sweep

            Each entry maps a label to `learning_rate -> optax.GradientTransformation`. Every
            optimizer gets the same extra arguments in `update`: `value` (the loss),
            `grad_fn` (used by SAM) and `hvp_fn` (a Hessian-vector product, used by Sophia);
            optimizers ignore the ones they do not need. The learning rate is a traced value
            inside `jax.vmap`, which optlab's factories accept (their hyperparameter checks
            only look at concrete Python numbers).
            """
        ),
        _code(
            """
            OPTIMIZERS = {
                "sgd (momentum 0.9)": lambda lr: optlab.get("sgd", learning_rate=lr, momentum=0.9),
                "adamw": lambda lr: optlab.get("adamw", learning_rate=lr),
                "lion": lambda lr: optlab.get("lion", learning_rate=lr),
                "ademamix": lambda lr: optlab.get("ademamix", learning_rate=lr),
                "diffgrad": lambda lr: optlab.get("diffgrad", learning_rate=lr),
                "grams": lambda lr: optlab.get("grams", learning_rate=lr),
                "cautious_adamw": lambda lr: optlab.get("cautious_adamw", learning_rate=lr),
                "sophia": lambda lr: optlab.get("sophia", learning_rate=lr),
                "sam(adamw)": lambda lr: optlab.sam(optlab.get("adamw", learning_rate=lr), rho=0.05),
            }
            STEPS = 1000
            LEARNING_RATES = jnp.logspace(-4, 0, 9)  # 1e-4 ... 1


            def run(make_tx, loss, p0, lr):
                tx = make_tx(lr)
                grad_fn = jax.grad(loss)

                def step(carry, _):
                    p, state = carry
                    value, grads = jax.value_and_grad(loss)(p)
                    updates, state = tx.update(
                        grads, state, p, value=value, grad_fn=grad_fn,
                        hvp_fn=lambda q, v: jax.jvp(grad_fn, (q,), (v,))[1],
                    )
                    return (optax.apply_updates(p, updates), state), (p, value)

                _, (path, values) = jax.lax.scan(step, (p0, tx.init(p0)), None, length=STEPS)
                return path, values


            results = {}  # (problem, optimizer) -> best learning rate, path, losses
            for problem, (loss, p0, _, _) in PROBLEMS.items():
                for label, make_tx in OPTIMIZERS.items():
                    sweep = jax.jit(jax.vmap(lambda lr: run(make_tx, loss, p0, lr)))
                    paths, values = sweep(LEARNING_RATES)
                    # Score: worst loss of the last 100 steps (penalizes oscillation; NaN -> +inf).
                    score = jnp.nan_to_num(values[:, -100:].max(axis=1), nan=jnp.inf)
                    best = int(jnp.argmin(score))
                    results[problem, label] = dict(
                        lr=float(LEARNING_RATES[best]), path=np.asarray(paths[best]),
                        losses=np.asarray(values[best]), final=float(score[best]),
                    )

            for problem in PROBLEMS:
                print(f"\\n{problem}: best learning rate of the sweep, score, final point")
                for label in OPTIMIZERS:
                    r = results[problem, label]
                    x, y = r["path"][-1]
                    print(f"  {label:<20} lr={r['lr']:<8.0e} score={r['final']:<10.3g}"
                          f" final point ({x:+.3f}, {y:+.3f})")
            """
        ),
        _md("## Trajectories"),
        _code(
            """
            fig, axes = plt.subplots(1, 2, figsize=(13, 5.5))
            colors = plt.cm.tab10(np.linspace(0, 1, 10))
            for ax, (problem, (loss, p0, minimum, (xlim, ylim))) in zip(axes, PROBLEMS.items()):
                xs, ys = np.linspace(*xlim, 300), np.linspace(*ylim, 300)
                X, Y = np.meshgrid(xs, ys)
                Z = jax.vmap(jax.vmap(loss))(jnp.stack([X, Y], axis=-1))
                levels = np.logspace(-1, 3.5, 25) if problem == "rosenbrock" else 25
                ax.contour(X, Y, Z, levels=levels, cmap="Greys", linewidths=0.6)
                for color, label in zip(colors, OPTIMIZERS):
                    path = results[problem, label]["path"]
                    ax.plot(path[:, 0], path[:, 1], "-", color=color, lw=1.2, label=label, alpha=0.9)
                    ax.plot(*path[-1], "o", color=color, ms=4)
                ax.plot(*np.asarray(p0), "ks", ms=6, label="start")
                ax.plot(*minimum, "k*", ms=12, label="global minimum")
                ax.set(xlim=xlim, ylim=ylim, title=problem, xlabel="x", ylabel="y")
            axes[0].legend(fontsize=8, loc="lower left")
            fig.tight_layout()
            plt.show()
            """
        ),
        _md("## Loss curves (best learning rate of each optimizer)"),
        _code(
            """
            fig, axes = plt.subplots(1, 2, figsize=(13, 4))
            for ax, problem in zip(axes, PROBLEMS):
                for color, label in zip(colors, OPTIMIZERS):
                    r = results[problem, label]
                    ax.plot(r["losses"], color=color, lw=1.2, label=f"{label} (lr {r['lr']:.0e})")
                ax.set(yscale="log", title=problem, xlabel="step", ylabel="loss")
                ax.grid(True, which="both", alpha=0.3)
            axes[0].legend(fontsize=8)
            fig.tight_layout()
            plt.show()
            """
        ),
        _md(
            """
            ## Reading the plots

            * On **Rosenbrock** the difficulty is conditioning: the valley floor is curved and
              the walls are 100x steeper than the floor. Adaptive methods (AdamW and its
              variants) and the curvature-aware Sophia reach `(1, 1)`; plain momentum SGD
              needs a small learning rate to stay stable on the walls; sign-based Lion moves
              by `lr` per coordinate per step, so it ends up oscillating at a distance set by
              its learning rate.
            * **SAM** minimizes the worst loss within a radius `rho` around the weights, not
              the loss itself; on a deterministic, badly conditioned valley it settles where
              the perturbed gradient vanishes, which need not be the minimum. Its purpose is
              different: see `sam_vs_sgd.ipynb`.
            * On **Rastrigin** most methods stop in the local minimum nearest to their start,
              whatever their learning rate. A run whose steps are large compared with the
              basins (width about 1), such as momentum SGD at a learning rate where it is
              unstable on the steep walls (curvature up to about 400), bounces across the
              landscape and may end in a lower basin by chance: exploration, not optimization.

            Your own optimizer drops into the same sweep: any
            `learning_rate -> optax.GradientTransformation` works, e.g. a chain of optlab
            transforms.
            """
        ),
        _code(
            """
            def clipped_adamw(lr):
                return optax.chain(optax.clip_by_global_norm(1.0), optlab.get("adamw", learning_rate=lr))


            loss, p0, _, _ = PROBLEMS["rosenbrock"]
            paths, values = jax.jit(jax.vmap(lambda lr: run(clipped_adamw, loss, p0, lr)))(LEARNING_RATES)
            print("clip + adamw on rosenbrock, final loss per learning rate:")
            for lr, v in zip(LEARNING_RATES, values[:, -1]):
                print(f"  lr={float(lr):.0e}  loss={float(v):.3g}")
            print(f"notebook time: {time.perf_counter() - _t0:.1f} s")
            """
        ),
    ]


# ---------------------------------------------------------------------------
# sam_vs_sgd.ipynb
# ---------------------------------------------------------------------------


def sam_vs_sgd():
    return [
        _badge(
            "sam_vs_sgd.ipynb",
            "SAM vs SGD: sharp and flat minima",
            """
            Sharpness-Aware Minimization (Foret et al., 2021) replaces the gradient at `w` by
            the gradient at the perturbed point `w + rho g / ||g||`, i.e. it descends on the
            worst loss in a `rho`-ball around the weights. Here we watch it choose a flat
            minimum where plain gradient descent (SGD without noise) stops at a sharp one,
            and we measure sharpness with `optlab.sharpness_diagnostics`.

            The toy problem is a 2-parameter "network" `f(x) = a * b * x` fitted to `y = x`:

            `L(a, b) = (a b - 1)^2`.

            Every point of the hyperbola `a b = 1` is a global minimum (`L = 0`), but they
            are not equally sharp: at a minimum the Hessian is `2 [[b^2, 1], [1, a^2]]`, with
            eigenvalues `0` and `2 (a^2 + b^2)`. The flattest minima are `(1, 1)` and
            `(-1, -1)` (top eigenvalue 4); unbalanced ones such as `(3, 1/3)` are sharp
            (about 18). The same rescaling symmetry (`a -> c a, b -> b / c`) exists between
            consecutive layers of every ReLU network.
            """,
        ),
        _install(),
        _code(
            """
            import time

            import jax
            import jax.numpy as jnp
            import matplotlib.pyplot as plt
            import numpy as np
            import optax
            import optlab

            _t0 = time.perf_counter()


            def loss(w):
                a, b = w[0], w[1]
                return (a * b - 1.0) ** 2


            def top_eigenvalue_exact(w):
                # Largest Hessian eigenvalue from jax.hessian (2x2: eigvalsh is exact).
                return jnp.linalg.eigvalsh(jax.hessian(loss)(w))[-1]


            # Unbalanced starting points (a != b): gradient descent keeps a^2 - b^2 nearly
            # constant, so it lands on a sharp minimum.
            starts = jnp.array([[3.0, 0.1], [0.1, 3.0], [2.5, -0.2], [-3.0, -0.3], [0.5, 0.2], [-0.2, 2.0]])
            print(starts.shape[0], "starting points")
            """
        ),
        _md(
            """
            ## Training

            Both runs use `optax.sgd(0.02)` as the base update, for 2000 full-batch steps.
            `optlab.sam(base, rho)` needs the gradient function as the `grad_fn` extra
            argument of `update`. All starting points run at once under `jax.vmap`.
            """
        ),
        _code(
            """
            LR, RHO, STEPS = 0.02, 0.2, 2000
            OPTIMIZERS = {
                "SGD": optax.sgd(LR),
                f"SAM (rho={RHO})": optlab.sam(optax.sgd(LR), rho=RHO),
            }


            def train(tx, w0):
                def step(carry, _):
                    w, state = carry
                    grads = jax.grad(loss)(w)
                    updates, state = tx.update(grads, state, w, grad_fn=jax.grad(loss))
                    return (optax.apply_updates(w, updates), state), w

                (w, _), path = jax.lax.scan(step, (w0, tx.init(w0)), None, length=STEPS)
                return w, path


            final, paths = {}, {}
            for name, tx in OPTIMIZERS.items():
                final[name], paths[name] = jax.jit(jax.vmap(lambda w0: train(tx, w0)))(starts)
                final[name].block_until_ready()

            # Sanity check: rho = 0 is exactly the base optimizer.
            w_sgd, _ = jax.jit(lambda w: train(optax.sgd(LR), w))(starts[0])
            w_sam0, _ = jax.jit(lambda w: train(optlab.sam(optax.sgd(LR), rho=0.0), w))(starts[0])
            assert np.allclose(w_sgd, w_sam0), (w_sgd, w_sam0)
            print("rho=0 SAM == SGD:", np.asarray(w_sgd), np.asarray(w_sam0))
            """
        ),
        _md(
            """
            ## Sharpness at the end points

            `optlab.sharpness_diagnostics(loss_fn, params, rho)` returns the first-order SAM
            sharpness `L(w + rho g/||g||) - L(w)` and the top Hessian eigenvalue by power
            iteration on Hessian-vector products (no Hessian is formed, so it scales to real
            networks, and it is jittable). On this 2-D problem we can check it against the
            exact eigenvalue from `jax.hessian` and the closed form `2 (a^2 + b^2)`.
            """
        ),
        _code(
            """
            diagnose = jax.jit(jax.vmap(lambda w: optlab.sharpness_diagnostics(loss, w, rho=0.05)))
            header = ("", "start", "end", "loss", "top eig (optlab)", "exact", "2(a²+b²)")
            print("{:<16}{:<16}{:<18}{:>9}{:>18}{:>8}{:>10}".format(*header))
            summary = {}
            for name in OPTIMIZERS:
                d = diagnose(final[name])
                exact = jax.vmap(top_eigenvalue_exact)(final[name])
                closed = 2 * jnp.sum(final[name] ** 2, axis=1)
                np.testing.assert_allclose(d["top_eigenvalue"], exact, rtol=1e-3, atol=1e-3)
                summary[name] = np.asarray(d["top_eigenvalue"])
                for s, w, l, e, x, c in zip(starts, final[name], d["loss"], d["top_eigenvalue"], exact, closed):
                    print(f"{name:<16}({s[0]:+.2f}, {s[1]:+.2f})  ({w[0]:+.3f}, {w[1]:+.3f})"
                          f"{float(l):>9.1e}{float(e):>18.2f}{float(x):>8.2f}{float(c):>10.2f}")
            for name, eig in summary.items():
                print(f"mean top eigenvalue, {name}: {eig.mean():.2f}")
            """
        ),
        _md(
            """
            ## Trajectories and sharpness along the way

            Left: the loss landscape (log scale) with the valley of minima `a b = 1` (white)
            and its two flattest points (stars). SGD (dashed) runs straight to the valley and
            stops wherever it lands. SAM (solid) reaches the valley too, then keeps moving
            *along* it toward the flat minima: in the valley the gradient is zero, but the
            gradient at the perturbed point is not, and it points toward balanced `(a, b)`.
            Right: the top Hessian eigenvalue along each trajectory.
            """
        ),
        _code(
            """
            fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 5.5))
            a = np.linspace(-3.5, 3.5, 400)
            A, B = np.meshgrid(a, a)
            ax.contourf(A, B, np.log10((A * B - 1) ** 2 + 1e-3), levels=30, cmap="viridis")
            for sign in (1, -1):
                t = np.linspace(0.28, 3.5, 200) * sign
                ax.plot(t, 1 / t, "w-", lw=1.5)
            ax.plot([1, -1], [1, -1], "w*", ms=14)
            styles = {name: ls for name, ls in zip(OPTIMIZERS, ("--", "-"))}
            colors = plt.cm.tab10(np.arange(len(starts)))
            every = 10  # plot every 10th step
            for name in OPTIMIZERS:
                path = np.asarray(paths[name])  # (starts, steps, 2)
                eig = jax.vmap(jax.vmap(top_eigenvalue_exact))(jnp.asarray(path[:, ::every]))
                for i, c in enumerate(colors):
                    ax.plot(path[i, :, 0], path[i, :, 1], styles[name], color=c, lw=1.5)
                    ax.plot(*path[i, -1], "o", color=c, ms=5)
                    ax2.plot(np.arange(0, STEPS, every), eig[i], styles[name], color=c, lw=1.2)
            ax.set(xlim=(-3.5, 3.5), ylim=(-3.5, 3.5), xlabel="a", ylabel="b",
                   title="log10 loss; dashed SGD, solid SAM")
            ax2.axhline(4.0, color="k", lw=0.8, ls=":")
            ax2.set(yscale="log", xlabel="step", ylabel="top Hessian eigenvalue",
                    title="sharpness along the trajectories (dotted: flattest minimum, 4)")
            fig.tight_layout()
            plt.show()
            """
        ),
        _md(
            """
            ## Why flatness matters: robustness to weight noise

            A flat minimum keeps a low loss when the weights move a little (a proxy for a
            shift between training and test data). Average loss under random weight
            perturbations of norm 0.1 at each end point:
            """
        ),
        _code(
            """
            key = jax.random.key(0)
            directions = jax.random.normal(key, (256, 2))
            directions = 0.1 * directions / jnp.linalg.norm(directions, axis=1, keepdims=True)
            for name in OPTIMIZERS:
                perturbed = jax.vmap(lambda w: jax.vmap(lambda d: loss(w + d))(directions).mean())(final[name])
                print(f"{name:<16} mean loss under weight noise: {float(perturbed.mean()):.4f}"
                      f"   (per start: {np.round(np.asarray(perturbed), 4)})")
            print(f"notebook time: {time.perf_counter() - _t0:.1f} s")
            """
        ),
        _md(
            """
            Notes:

            * SAM costs a second gradient evaluation per step (`grad_fn` at the perturbed
              point). `optlab.looksam` reuses the perturbation direction for several steps
              and, for loops that make two `update` calls per step, `optax.contrib.sam` is
              SAM in that style.
            * `rho` sets the scale of the flatness SAM can see; `rho=0` is exactly the base
              optimizer (checked above). Variants: `optlab.asam` (scale-invariant radius),
              `optlab.gsam`, `optlab.fisher_sam`, `optlab.masked_sam`.
            """
        ),
    ]


# ---------------------------------------------------------------------------
# averaging_digits.ipynb
# ---------------------------------------------------------------------------


def averaging_digits():
    return [
        _badge(
            "averaging_digits.ipynb",
            "Weight averaging on digits: SWA and EMA with Flax NNX",
            """
            Averaging the weights visited by SGD gives a better model than the last iterate
            when the learning rate stays high: Stochastic Weight Averaging (SWA, Izmailov et
            al., 2018) takes the running mean of iterates sampled every few steps; an
            exponential moving average (EMA) of the weights keeps a recency-weighted mean.

            In optlab both are optimizer wrappers: `optlab.swa(tx, start_step, every_k)` and
            `optlab.ema_params(tx, decay)` run `tx` unchanged and keep the average in the
            optimizer state; `optlab.averaged_params(state, which=...)` reads it out (also
            from a `flax.nnx.Optimizer`). Here both run at once, nested, while training a
            small Flax NNX MLP on scikit-learn's bundled digits data (no download).
            """,
        ),
        _install(),
        _code(
            """
            import time

            import jax
            import jax.numpy as jnp
            import matplotlib.pyplot as plt
            import numpy as np
            import optax
            import optlab
            from flax import nnx
            from sklearn.datasets import load_digits
            from sklearn.model_selection import train_test_split

            _t0 = time.perf_counter()
            digits = load_digits()
            x = (digits.data / 16.0).astype(np.float32)  # 1797 8x8 images, pixels in [0, 1]
            y = digits.target.astype(np.int32)
            x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
            print("train", x_train.shape, "test", x_test.shape)
            """
        ),
        _code(
            """
            class MLP(nnx.Module):
                def __init__(self, rngs: nnx.Rngs):
                    self.hidden = nnx.Linear(64, 128, rngs=rngs)
                    self.out = nnx.Linear(128, 10, rngs=rngs)

                def __call__(self, x):
                    return self.out(jax.nn.relu(self.hidden(x)))


            model = MLP(nnx.Rngs(0))
            STEPS, BATCH, SWA_START = 1000, 32, 500

            # A constant learning rate with weight decay: the decay keeps the gradients from
            # vanishing once the training set is fitted, so the iterates keep bouncing
            # around the minimum (a noisy equilibrium), which is where averaging pays off.
            # SWA samples every 10 steps from step 500; the EMA (decay 0.99, ~100-step
            # memory) runs from the start.
            base = optax.chain(optax.add_decayed_weights(1e-3), optax.sgd(0.1, momentum=0.9))
            tx = optlab.ema_params(optlab.swa(base, start_step=SWA_START, every_k=10), decay=0.99)
            optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)


            def loss_fn(model, x, y):
                return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()


            @nnx.jit
            def train_step(model, optimizer, x, y):
                loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
                optimizer.update(model, grads)
                return loss


            graphdef, _ = nnx.split(model)


            @jax.jit
            def evaluate(params):
                logits = nnx.merge(graphdef, params)(x_test)
                loss = optax.softmax_cross_entropy_with_integer_labels(logits, y_test).mean()
                return loss, jnp.mean(jnp.argmax(logits, -1) == y_test)
            """
        ),
        _md(
            """
            ## Training

            Every 25 steps we evaluate three sets of weights on the test split: the live
            weights, the SWA mean and the EMA, both read from the optimizer with
            `optlab.averaged_params(optimizer, which=...)`.
            """
        ),
        _code(
            """
            rng = np.random.default_rng(0)
            history = {"step": [], "live": [], "swa": [], "ema": []}
            for step in range(1, STEPS + 1):
                idx = rng.integers(0, len(x_train), BATCH)
                train_step(model, optimizer, x_train[idx], y_train[idx])
                if step % 25 == 0:
                    weights = {
                        "live": nnx.state(model, nnx.Param),
                        "swa": optlab.averaged_params(optimizer, which="swa"),
                        "ema": optlab.averaged_params(optimizer, which="ema_params"),
                    }
                    history["step"].append(step)
                    for name, params in weights.items():
                        history[name].append([float(v) for v in evaluate(params)])
            history = {k: np.asarray(v) for k, v in history.items()}

            for name in ("live", "swa", "ema"):
                loss, acc = history[name][-1]
                last = history[name][-8:, 1]  # the last 200 steps
                print(f"{name:<5} final test loss {loss:.4f}  accuracy {acc:.4f}"
                      f"  (last 200 steps: accuracy {last.mean():.4f} +- {last.std():.4f})")
            """
        ),
        _code(
            """
            fig, axes = plt.subplots(1, 2, figsize=(13, 4.2))
            steps = history["step"]
            for name, style in (("live", "C0-"), ("ema", "C2-"), ("swa", "C3-")):
                keep = steps >= SWA_START if name == "swa" else slice(None)  # SWA = initial weights before
                for ax, col in zip(axes, (0, 1)):
                    ax.plot(steps[keep], history[name][keep, col], style, lw=1.5, label=name)
            for ax, ylabel in zip(axes, ("test loss", "test accuracy")):
                ax.axvline(SWA_START, color="k", ls=":", lw=1)
                ax.set(xlabel="step", ylabel=ylabel)
                ax.grid(True, alpha=0.3)
                ax.legend()
            axes[0].set_yscale("log")
            axes[1].set_ylim(0.9, 1.0)
            fig.suptitle("live weights vs their averages (dotted: SWA starts)")
            fig.tight_layout()
            plt.show()
            """
        ),
        _md(
            """
            ## Using the averaged weights

            The averages have the structure of the model's parameters, so `nnx.update` loads
            them into a copy of the model for evaluation or export:
            """
        ),
        _code(
            """
            swa_model = nnx.clone(model)
            nnx.update(swa_model, optlab.averaged_params(optimizer, which="swa"))
            acc = jnp.mean(jnp.argmax(swa_model(x_test), -1) == y_test)
            print(f"SWA model accuracy: {float(acc):.4f}")
            assert np.isclose(float(acc), history["swa"][-1, 1])
            print(f"notebook time: {time.perf_counter() - _t0:.1f} s")
            """
        ),
        _md(
            """
            Notes:

            * Models with BatchNorm need their running statistics recomputed for the
              averaged weights (one pass over training data): `optlab.update_bn`.
            * Other averaging wrappers read the same way: `optlab.lawa` (mean of the last
              `k` checkpoints), `optlab.bema` (bias-corrected EMA), `optlab.switch_ema`,
              `optlab.lookahead`.
            * `ema_params(..., warmup="power")` gives the diffusers/timm EMA schedule;
              `debias=True` (default) makes early averages unbiased.
            """
        ),
    ]


# ---------------------------------------------------------------------------
# schedules.ipynb
# ---------------------------------------------------------------------------


def schedules():
    return [
        _badge(
            "schedules.ipynb",
            "Learning-rate schedules and parameter-free optimizers",
            """
            Part 1 plots every schedule of `optlab` (plain `optax.Schedule` functions of the
            step, usable for any hyperparameter): warmup-stable-decay (WSD) with its three
            cooldown shapes, linear decay to zero, inverse square root with a cooldown,
            cyclic schedules, 1cycle with its inverse momentum, and a schedule refined
            from logged gradient norms.

            Part 2 trains the main job's digits MLP (`optlab.bench`) with parameter-free
            methods at their default settings, with no tuning at all (DoG, Prodigy,
            schedule-free AdamW), against AdamW at its tuned learning rate.
            """,
        ),
        _install(),
        _code(
            """
            import time

            import jax
            import jax.numpy as jnp
            import matplotlib.pyplot as plt
            import numpy as np
            import optax
            import optlab

            _t0 = time.perf_counter()
            T = 1000
            steps = np.arange(T + 50)


            def values(schedule):
                return np.asarray(jax.vmap(schedule)(jnp.asarray(steps)))
            """
        ),
        _md("## Part 1: every schedule"),
        _code(
            """
            lr_1cycle, momentum_1cycle = optlab.onecycle(1.0, T)
            rng = np.random.default_rng(0)
            grad_norms = 2.0 * np.exp(-np.arange(T) / 300) + 0.5 + 0.05 * rng.standard_normal(T)
            panels = {
                "WSD (warmup 50, cooldown 200)": {
                    shape: optlab.wsd_schedule(1.0, T, warmup_steps=50, decay_steps=200,
                                               decay_shape=shape)
                    for shape in ("linear", "1-sqrt", "cosine")},
                "decay to zero vs cosine": {
                    "linear_decay_to_zero": optlab.linear_decay_to_zero(1.0, T, warmup_steps=50),
                    "optax cosine": optax.warmup_cosine_decay_schedule(0.0, 1.0, 50, T)},
                "inverse sqrt": {
                    "no cooldown": optlab.inverse_sqrt_schedule(1.0, warmup_steps=50),
                    "cooldown 200": optlab.inverse_sqrt_schedule(
                        1.0, warmup_steps=50, cooldown_steps=200, total_steps=T)},
                "cyclic (period 250)": {
                    mode: optlab.cyclic_schedule(0.1, 1.0, 250, mode=mode)
                    for mode in ("triangular", "cosine", "swa")},
                "1cycle": {"learning rate": lr_1cycle, "momentum (b1)": momentum_1cycle},
                "refined from gradient norms": {
                    "refine_schedule": optlab.refine_schedule(grad_norms)},
            }
            fig, axes = plt.subplots(2, 3, figsize=(14, 7))
            for ax, (title, schedules) in zip(axes.flat, panels.items()):
                for name, schedule in schedules.items():
                    ax.plot(steps, values(schedule), label=name)
                ax.set(title=title, xlabel="step")
                ax.grid(True, alpha=0.3)
                ax.legend(fontsize=8)
            axes.flat[-1].plot(np.arange(T), grad_norms / grad_norms.max(), color="0.6", lw=0.6,
                               label="gradient norm (scaled)")
            axes.flat[-1].legend(fontsize=8)
            fig.tight_layout()
            plt.show()
            """
        ),
        _md(
            """
            Each schedule is a function of a (possibly traced) step, so it works under `jit`
            and drives any hyperparameter through `optax.inject_hyperparams`, e.g. 1cycle's
            momentum as SGD's `momentum`:
            """
        ),
        _code(
            """
            tx = optax.inject_hyperparams(optax.sgd)(learning_rate=lr_1cycle,
                                                     momentum=momentum_1cycle)
            state = tx.init(jnp.zeros(3))
            print({k: round(float(v), 4) for k, v in state.hyperparams.items()})
            """
        ),
        _md(
            """
            ## Part 2: parameter-free methods on digits, untuned

            The main job's task: a 64-128-128-10 MLP on scikit-learn's digits, batch 64,
            400 steps, 3 seeds vmapped. AdamW uses the main job's tuned learning rate
            (`optlab.bench.LEARNING_RATES["adamw"]`, from a sweep); DoG, Prodigy and
            schedule-free AdamW use their defaults (DoG and Prodigy have no learning rate to
            set: 1.0 is a multiplier). Schedule-free is evaluated at its averaged weights
            (`optlab.averaged_params`).
            """
        ),
        _code(
            """
            from flax import nnx
            from optlab import bench

            x_tr, y_tr, x_te, y_te = (jnp.asarray(a) for a in bench.load_data())
            SEEDS, STEPS, BATCH = 3, 400, 64
            graphdef, _ = nnx.split(bench.make_mlp(0))
            params0 = jax.tree.map(lambda *xs: jnp.stack(xs), *[
                nnx.to_pure_dict(nnx.split(bench.make_mlp(s))[1]) for s in range(SEEDS)])
            keys = jax.vmap(lambda s: jax.random.fold_in(jax.random.key(1234), s))(
                jnp.arange(SEEDS))


            def loss_fn(p, x, y):
                return optax.softmax_cross_entropy_with_integer_labels(
                    nnx.merge(graphdef, p)(x), y).mean()


            def train(tx):
                def one(p, s, key, t):
                    idx = jax.random.randint(jax.random.fold_in(key, t), (BATCH,), 0, len(x_tr))
                    v, g = jax.value_and_grad(loss_fn)(p, x_tr[idx], y_tr[idx])
                    u, s = tx.update(g, s, p, value=v)
                    return optax.apply_updates(p, u), s, v

                @jax.jit
                def run(p, s):
                    def body(c, t):
                        p, s, v = jax.vmap(one, in_axes=(0, 0, 0, None))(*c, keys, t)
                        return (p, s), v
                    (p, s), vs = jax.lax.scan(body, (p, s), jnp.arange(STEPS))
                    return p, s, vs.T

                return run(params0, jax.vmap(tx.init)(params0))


            @jax.jit
            def accuracy(p):
                return jax.vmap(lambda q: jnp.mean(
                    jnp.argmax(nnx.merge(graphdef, q)(x_te), -1) == y_te))(p)


            lr = bench.LEARNING_RATES["adamw"]
            runs = {f"adamw (tuned lr={lr})": optlab.adamw(lr),
                    "dog (default)": optlab.dog(),
                    "prodigy (default)": optlab.prodigy(),
                    "schedule_free_adamw (default)": optlab.schedule_free_adamw()}
            curves = {}
            for name, tx in runs.items():
                p, s, losses = train(tx)
                if name.startswith("schedule_free"):
                    p = jax.vmap(optlab.averaged_params)(s)  # evaluate at the average x
                acc = np.asarray(accuracy(p))
                curves[name] = np.asarray(losses).mean(0)
                print(f"{name:<32} test accuracy {acc.mean():.4f} +- {acc.std():.4f}"
                      f"   final train loss {curves[name][-40:].mean():.4f}")
            """
        ),
        _code(
            """
            fig, ax = plt.subplots(figsize=(8, 4))
            k = 10
            for name, c in curves.items():
                ax.plot(np.arange(k - 1, STEPS), np.convolve(c, np.ones(k) / k, "valid"), label=name)
            ax.set(xlabel="step", ylabel="training loss (10-step mean over seeds)", yscale="log")
            ax.grid(True, alpha=0.3)
            ax.legend()
            fig.tight_layout()
            plt.show()
            print(f"notebook time: {time.perf_counter() - _t0:.1f} s")
            """
        ),
        _md(
            """
            Notes:

            * The equal-steps comparison of schedules (WSD with a 1-sqrt cooldown vs cosine
              vs linear decay to zero) and the WSD branching property are in
              `benchmarks/schedules.py` (results in `benchmarks/results/schedules.md`).
            * DoG's authors recommend evaluating an average of the iterates: wrap it, e.g.
              `optlab.ema_params(optlab.dog(), decay=0.99)`.
            * Polyak-type steps (`optlab.sps`, `optlab.alr_smag`) also need no learning-rate
              schedule but need the loss: `update(..., value=loss)`, as done above for all.
            """
        ),
    ]


# ---------------------------------------------------------------------------
# diloco.ipynb
# ---------------------------------------------------------------------------


def diloco():
    return [
        _badge(
            "diloco.ipynb",
            "DiLoCo: training across replicas that rarely talk",
            """
            Synchronous data parallelism averages the gradients of all replicas at *every*
            step. DiLoCo (`optlab.diloco`) lets each replica run its own AdamW for `H` steps,
            then averages the *pseudo-gradients* `anchor - θ_r` once and takes an outer
            Nesterov step: `H` times fewer all-reduces. Here 4 replicas are simulated on one
            CPU with `jax.vmap(..., axis_name="replica")`; the same step function runs
            unchanged under `shard_map`, `pmap` or a multi-host mesh.
            """,
        ),
        _install(),
        _code(
            """
            import time

            _t0 = time.perf_counter()
            import jax
            import jax.numpy as jnp
            import matplotlib.pyplot as plt
            import numpy as np
            import optax
            from sklearn.datasets import load_digits
            from sklearn.model_selection import train_test_split

            import optlab

            REPLICAS, STEPS, GLOBAL_BATCH = 4, 300, 64
            d = load_digits()
            x_train, x_test, y_train, y_test = train_test_split(
                (d.data / 16.0).astype(np.float32), d.target.astype(np.int32),
                test_size=0.25, random_state=0, stratify=d.target)


            def init_mlp(key, hidden=128):
                k1, k2 = jax.random.split(key)
                glorot = jax.nn.initializers.glorot_uniform()
                return {"w1": glorot(k1, (64, hidden)), "b1": jnp.zeros(hidden),
                        "w2": glorot(k2, (hidden, 10)), "b2": jnp.zeros(10)}


            def logits(p, x):
                return jax.nn.relu(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]


            def loss_fn(p, x, y):
                return optax.softmax_cross_entropy_with_integer_labels(logits(p, x), y).mean()
            """
        ),
        _md(
            """
            ## One step function for every method

            Each replica calls `tx.update` with its own gradients. `optlab.replica_axes`
            keeps the step counter unbatched under `vmap`, so the sync stays a real
            conditional (as on devices) instead of a `select` that computes both branches.
            `optlab.bytes_on_the_wire` reads the bytes every replica sent.
            """
        ),
        _code(
            """
            def train(tx, seed=0):
                params = init_mlp(jax.random.key(seed))
                state = tx.init(params)
                axes = optlab.replica_axes(state)
                p = optlab.replicate(params, REPLICAS)
                s = optlab.replicate(state, REPLICAS, axes)
                per = GLOBAL_BATCH // REPLICAS
                idx = jax.random.randint(jax.random.key(seed + 1), (STEPS, REPLICAS, per), 0, len(x_train))

                def step(p, s, x, y):
                    updates, s = tx.update(jax.grad(loss_fn)(p, x, y), s, p)
                    return optax.apply_updates(p, updates), s

                vstep = jax.vmap(step, in_axes=(0, axes, 0, 0), out_axes=(0, axes), axis_name="replica")

                @jax.jit
                def run(p, s, xs, ys):
                    def body(carry, batch):
                        p, s = vstep(*carry, *batch)
                        acc = jnp.mean(jnp.argmax(logits(jax.tree.map(lambda a: a.mean(0), p), x_test), -1) == y_test)
                        return (p, s), acc
                    return jax.lax.scan(body, (p, s), (xs, ys))

                (p, s), accs = run(p, s, jnp.asarray(x_train)[idx], jnp.asarray(y_train)[idx])
                return np.asarray(accs), float(optlab.bytes_on_the_wire(s)) / REPLICAS


            adamw = optax.adamw(2e-3, weight_decay=1e-4)
            methods = {
                "DP AdamW (all-reduce every step)": optax.chain(optlab.compressed_all_reduce("replica"), adamw),
                "DiLoCo H=10": optlab.diloco(adamw, sync_period=10),
                "DiLoCo H=50": optlab.diloco(adamw, sync_period=50),
                "DiLoCo H=10 + top-k 10% EF": optlab.diloco(
                    adamw, sync_period=10, compressor=optlab.top_k(0.1), error_feedback="ef"),
            }
            results = {name: train(tx) for name, tx in methods.items()}
            for name, (accs, sent) in results.items():
                print(f"{name:<34} test accuracy {accs[-1]:.4f}   MB sent per replica {sent / 1e6:7.3f}")
            """
        ),
        _code(
            """
            fig, axes = plt.subplots(1, 2, figsize=(12, 4))
            for name, (accs, sent) in results.items():
                axes[0].plot(np.arange(1, STEPS + 1), accs, label=name, lw=1.2)
                axes[1].scatter(sent / 1e6, accs[-1], s=40)
                axes[1].annotate(name, (sent / 1e6, accs[-1]), fontsize=8, xytext=(4, 4), textcoords="offset points")
            axes[0].set(xlabel="inner step", ylabel="test accuracy (mean of replicas)", ylim=(0.5, 1.0))
            axes[0].legend(fontsize=8)
            axes[1].set(xscale="log", xlabel="MB sent per replica (log)", ylabel="final test accuracy")
            for ax in axes:
                ax.grid(alpha=0.3)
            fig.tight_layout()
            plt.show()
            """
        ),
        _md(
            """
            Between syncs the DiLoCo replicas drift apart (the accuracy of their mean dips),
            and every `H` steps the outer step pulls them back together. With 10-50x fewer
            bytes it reaches about the accuracy of synchronous AdamW on this small problem.

            ## Where the communication happens

            The sync is a branch of a `lax.switch` on the step counter: the lowered program
            has no collective on the replica axis outside it.
            """
        ),
        _code(
            """
            tx = optlab.diloco(adamw, sync_period=10)
            state = tx.init(init_mlp(jax.random.key(0)))
            axes = optlab.replica_axes(state)
            f = jax.vmap(lambda p, s, g: tx.update(g, s, p), in_axes=(0, axes, 0), out_axes=(0, axes), axis_name="replica")
            p = optlab.replicate(init_mlp(jax.random.key(0)), REPLICAS)
            jaxpr = jax.make_jaxpr(f)(p, optlab.replicate(state, REPLICAS, axes), p)
            print("top-level primitives:", sorted({e.primitive.name for e in jaxpr.jaxpr.eqns}))
            print(f"notebook time: {time.perf_counter() - _t0:.1f} s")
            """
        ),
        _md(
            """
            ## On several hosts

            The same `tx` runs under `jax.shard_map` over a mesh axis named `"replica"`;
            with `jax.distributed.initialize(...)` that axis can span processes (see the
            README's multi-host recipe; `tests/test_replicas_multidevice.py` runs DiLoCo on
            two processes over 127.0.0.1 and checks the anchors agree bit for bit).
            """
        ),
    ]


NOTEBOOKS = {
    "optimizer_zoo.ipynb": optimizer_zoo,
    "sam_vs_sgd.ipynb": sam_vs_sgd,
    "averaging_digits.ipynb": averaging_digits,
    "schedules.ipynb": schedules,
    "diloco.ipynb": diloco,
}


def build(name: str) -> nbformat.NotebookNode:
    """The notebook ``name`` (no outputs)."""
    nb = new_notebook(cells=NOTEBOOKS[name]())
    nb.metadata["kernelspec"] = {
        "display_name": "Python 3",
        "language": "python",
        "name": "python3",
    }
    nb.metadata["language_info"] = {"name": "python"}
    nb.metadata["colab"] = {"provenance": []}
    for i, cell in enumerate(nb.cells):  # stable ids: regenerating gives identical files
        cell["id"] = f"{Path(name).stem[:20]}-{i:02d}"
    return nb


def render(name: str) -> str:
    return nbformat.writes(build(name)) + "\n"


def execute(nb, timeout: int = 900):
    """Run ``nb`` top to bottom in a fresh ``python3`` kernel (optlab from this checkout,
    figures inline), in place; raises on the first failing cell."""
    import os

    from nbclient import NotebookClient

    path = [str(HERE.parent), os.environ.get("PYTHONPATH")]
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, path))
    os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    NotebookClient(
        nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(HERE)}}
    ).execute()
    return nb


def main(argv=None) -> int:
    """Write every notebook, executed (outputs and figures stored, so that a reader
    browsing the repository sees them); ``--no-execute`` writes the cells only."""
    argv = sys.argv[1:] if argv is None else argv
    for name in NOTEBOOKS:
        nb = nbformat.reads(render(name), as_version=4)
        if "--no-execute" not in argv:
            execute(nb)
        nbformat.validate(nb)
        nbformat.write(nb, HERE / name)
        print("wrote", HERE / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
