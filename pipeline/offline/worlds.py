"""Simulated two-level worlds: a prompt has a distribution over states, a state over rollout rewards.

Pure numpy/scipy. Each family draws a latent per state (its mean, its logit, its chance of a
correct answer) and rewards given that latent, and knows its ground truth exactly: the value
V_n of any state (``state_value``) and the prompt's best-of-n curve (``prompt_value``). Every
prompt of a world is an i.i.d. copy of the same two-level distribution.

Families (parameters and defaults in ``FAMILY_PARAMS``):
- ``gaussian``: state mean ~ N(0, sigma0^2); reward ~ N(mean, sigma1^2). V_n = mean + sigma1 E(n).
- ``heavy``: as gaussian, with a Student-t(df) response noise: a heavier-than-normal upper tail.
- ``bounded``: state logit ~ N(mu0, sigma0^2); reward = sigmoid(logit + sigma1 Z) in (0, 1),
  saturating near 1 like a squashed RM score or a probability.
- ``bimodal``: a state leads to a correct answer with p = sigmoid(b), b ~ N(logit(p0), sigma0^2);
  correct rollouts score ~ N(mu_correct, sigma1^2), incorrect ~ N(mu_wrong, sigma1^2).
- ``discrete``: a latent quality ~ N(0, sigma0^2) plus sigma1 Z is cut into ``levels`` equally
  spaced rewards in [0, 1] (many ties; the maximum is reached often).

Partial responses (``spec_rejection``): a reward model's score of a response cut after a fraction f
of its tokens is a noisy reading of the reward the whole response gets, whose noise shrinks as the
response grows: ``partial = final + partial_noise x scale x sqrt(1 - f) x Z`` with Z standard normal,
independent per reading, ``scale`` the world's robust spread of a prompt draw's reward
(``reward_scale``), and ``partial_noise`` a world parameter (default 1: at the first token, the
reading's correlation with the final reward is about 1/sqrt(2)). A finished response (f = 1) is
read exactly. Like ``prefix_noise`` it changes no reward.

How exact the ground truth is: closed forms for gaussian and discrete (finite sums); adaptive
quadrature of the CDF of the maximum for heavy and for every prompt curve; for bounded and
bimodal state values, the quadrature on a 2001-point latent grid, interpolated linearly
(interpolation error below 1e-6 in the tests).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import numpy as np
from scipy import integrate, special, stats

from pipeline.errors import ConfigError
from pipeline.stats.extremes import (
    StudentTTails,
    expected_max_from_cdf,
    expected_max_on_grid,
    max_of_normals_grid,
    normal_quadrature,
    student_t_mean_excess,
)
from pipeline.stats.tail import expected_max_std_normal

FAMILY_PARAMS: dict[str, dict[str, float]] = {
    "gaussian": {"sigma0": 1.0, "sigma1": 1.0},
    "heavy": {"sigma0": 1.0, "sigma1": 1.0, "df": 3.0},
    "bounded": {"mu0": 1.0, "sigma0": 1.0, "sigma1": 1.0},
    "bimodal": {"p0": 0.3, "sigma0": 1.5, "mu_correct": 1.0, "mu_wrong": 0.0, "sigma1": 0.5},
    "discrete": {"sigma0": 1.0, "sigma1": 1.0, "levels": 5.0},
}
# How a reward model reads a state's prefix alone (``World.prefix_score``): its state's quality plus a
# normal error of this sd, on the latent's scale. Not in FAMILY_PARAMS: it changes no reward.
PREFIX_NOISE = "prefix_noise"
DEFAULT_PREFIX_NOISE = 1.0
# How a reward model reads a partial response (``World.partial_score``): the sd of its error at the first
# token, in units of ``World.reward_scale``. Not in FAMILY_PARAMS: it changes no reward either.
PARTIAL_NOISE = "partial_noise"
DEFAULT_PARTIAL_NOISE = 1.0
_SCALE_DRAWS = 200_000  # prompt draws behind a world's robust reward scale (a fixed seed: the same scale everywhere)


class World(ABC):
    """One family with fixed parameters: sampling (vectorised) and exact ground truth."""

    family: str = ""
    has_correct = False
    reward_bounds: tuple[float, float] = (-math.inf, math.inf)

    def __init__(self, prefix_noise: float = DEFAULT_PREFIX_NOISE, partial_noise: float = DEFAULT_PARTIAL_NOISE,
                 **params: float):
        self.params = dict(params)
        self.prefix_noise = float(prefix_noise)
        self.partial_noise = float(partial_noise)
        self._prompt_values: dict[int, float] = {}
        self._reward_scale: float | None = None

    @abstractmethod
    def sample_states(self, rng: np.random.Generator, shape) -> np.ndarray:
        """Latents of fresh states of a prompt (one per root rollout)."""

    @abstractmethod
    def sample_rewards(self, rng: np.random.Generator, latents: np.ndarray):
        """(rewards, correct or None), one rollout per latent, same shape as ``latents``."""

    @abstractmethod
    def state_value(self, latents: np.ndarray, n: int) -> np.ndarray:
        """True V_n of each state: the expected max of n rewards from it."""

    @abstractmethod
    def _prompt_value(self, n: int) -> float:
        ...

    def prompt_value(self, n: int) -> float:
        """True BoN value at budget n: the expected max of n rollouts from the prompt."""
        n = int(n)
        if n not in self._prompt_values:
            self._prompt_values[n] = float(self._prompt_value(n))
        return self._prompt_values[n]

    def accuracy_of_states(self, latents: np.ndarray) -> np.ndarray | None:
        return None

    def state_cdf(self, latents: np.ndarray, x: np.ndarray) -> np.ndarray:
        """P(reward <= x) of each state (latents (S,), x (K,)) -> (S, K): the ceilings' arms."""
        raise NotImplementedError

    def prompt_cdf(self, x: np.ndarray) -> np.ndarray:
        """P(reward <= x) of a rollout from the prompt (K,): the state CDF averaged over states."""
        nodes, weights = normal_quadrature(1.0)
        return weights @ self.state_cdf(self._latent_of_normal(nodes), x)

    def _latent_of_normal(self, z: np.ndarray) -> np.ndarray:
        """The state latent at standard-normal quantile z (states are drawn as a normal, or a map of one)."""
        return self.params["sigma0"] * z

    @property
    def upper_bound(self) -> float | None:
        """The largest reward the world can give, None where rewards are unbounded above."""
        return self.reward_bounds[1] if math.isfinite(self.reward_bounds[1]) else None

    def prefix_score(self, rng: np.random.Generator, latents: np.ndarray) -> np.ndarray:
        """A reward model's score of each state's prefix alone: a noisy reading of the state's quality
        (its latent with a normal error of sd ``prefix_noise``, shown as the reward of that quality).
        Partial responses are read this way by real reward models: informative, and noisy."""
        noisy = latents + self.prefix_noise * rng.standard_normal(np.shape(latents))
        return self._reading(noisy)

    def _reading(self, quality: np.ndarray) -> np.ndarray:
        return quality

    def reward_scale(self) -> float:
        """A robust spread of a prompt draw's reward: its interquartile range / 1.349 (the sd of a
        normal), from 200,000 draws with a fixed seed; the sd where the quartiles tie (few levels)."""
        if self._reward_scale is None:
            rng = np.random.default_rng(20241026)
            rewards, _ = self.sample_rewards(rng, self.sample_states(rng, _SCALE_DRAWS))
            low, high = np.quantile(rewards, [0.25, 0.75])
            self._reward_scale = float((high - low) / 1.349) if high > low else float(np.std(rewards))
        return self._reward_scale

    def partial_score(self, rng: np.random.Generator, final: np.ndarray, fraction_done: np.ndarray) -> np.ndarray:
        """A reward model's score of responses cut after ``fraction_done`` of their tokens, whose whole
        responses get ``final``: ``final + partial_noise scale sqrt(1 - f) Z`` (module docstring)."""
        fraction = np.clip(fraction_done, 0.0, 1.0)
        noise = rng.standard_normal(np.shape(final))
        return final + self.partial_noise * self.reward_scale() * np.sqrt(1.0 - fraction) * noise

    def describe(self) -> str:
        shown = dict(self.params)
        if self.prefix_noise != DEFAULT_PREFIX_NOISE:
            shown[PREFIX_NOISE] = self.prefix_noise
        if self.partial_noise != DEFAULT_PARTIAL_NOISE:
            shown[PARTIAL_NOISE] = self.partial_noise
        return self.family + "(" + ", ".join(f"{k}={v:g}" for k, v in shown.items()) + ")"


class GaussianWorld(World):
    family = "gaussian"

    def sample_states(self, rng, shape):
        return rng.normal(0.0, self.params["sigma0"], size=shape)

    def sample_rewards(self, rng, latents):
        return latents + rng.normal(0.0, self.params["sigma1"], size=latents.shape), None

    def state_value(self, latents, n):
        return latents + self.params["sigma1"] * expected_max_std_normal(n)

    def _prompt_value(self, n):
        return math.hypot(self.params["sigma0"], self.params["sigma1"]) * expected_max_std_normal(n)

    def state_cdf(self, latents, x):
        return special.ndtr((x[None, :] - latents[:, None]) / self.params["sigma1"])


GRID_REACH = 1e5  # the heavy prompt's sinh grid, in sigma0 + sigma1: StudentTTails has what lies beyond


class HeavyWorld(World):
    family = "heavy"

    def __init__(self, **params):
        super().__init__(**params)
        self._noise = stats.t(self.params["df"])
        self._noise_max: dict[int, float] = {}

    def sample_states(self, rng, shape):
        return rng.normal(0.0, self.params["sigma0"], size=shape)

    def sample_rewards(self, rng, latents):
        noise = rng.standard_t(self.params["df"], size=latents.shape)
        return latents + self.params["sigma1"] * noise, None

    def state_cdf(self, latents, x):
        return self._noise.cdf((x[None, :] - latents[:, None]) / self.params["sigma1"])

    def state_value(self, latents, n):
        if n not in self._noise_max:
            df = self.params["df"]
            # n = 1: the mean, 0, which quadrature reaches only as two heavy tails cancelling (off by 5 at df = 1.05)
            self._noise_max[n] = 0.0 if n == 1 else expected_max_from_cdf(
                self._noise, n, lambda z: float(student_t_mean_excess(df, z)))
        return latents + self.params["sigma1"] * self._noise_max[n]

    def _prompt_value(self, n):
        if not hasattr(self, "_prompt_grid"):
            s0, s1 = self.params["sigma0"], self.params["sigma1"]
            nodes, weights = normal_quadrature(s0)
            # sinh-spaced: fine near the centre, reaching +-1e5 scales
            x = (s0 + s1) * np.sinh(np.linspace(-np.arcsinh(GRID_REACH), np.arcsinh(GRID_REACH), 40001))
            log_cdf = special.logsumexp(self._noise.logcdf((x[:, None] - nodes) / s1), b=weights, axis=1)
            self._prompt_grid = x, log_cdf
            self._tails = StudentTTails(self.params["df"], nodes, weights, s1, x[-1])
        return expected_max_on_grid(*self._prompt_grid, n) + self._tails.beyond(n)


class BoundedWorld(World):
    family = "bounded"
    reward_bounds = (0.0, 1.0)

    def __init__(self, **params):
        super().__init__(**params)
        self._tables: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def sample_states(self, rng, shape):
        return rng.normal(self.params["mu0"], self.params["sigma0"], size=shape)

    def sample_rewards(self, rng, latents):
        return special.expit(latents + rng.normal(0.0, self.params["sigma1"], size=latents.shape)), None

    def _reading(self, quality):
        return special.expit(quality)

    def state_cdf(self, latents, x):
        with np.errstate(divide="ignore"):
            logit = special.logit(np.clip(x, 0.0, 1.0))
        return special.ndtr((logit[None, :] - latents[:, None]) / self.params["sigma1"])

    def _latent_of_normal(self, z):
        return self.params["mu0"] + self.params["sigma0"] * z

    def state_value(self, latents, n):
        if n not in self._tables:
            mu0, s0, s1 = self.params["mu0"], self.params["sigma0"], self.params["sigma1"]
            grid = np.linspace(mu0 - 9 * s0, mu0 + 9 * s0, 2001)
            z, mass = max_of_normals_grid(n)
            self._tables[n] = grid, special.expit(grid[:, None] + s1 * z[None, :]) @ mass
        grid, table = self._tables[n]
        return np.interp(latents, grid, table)

    def _prompt_value(self, n):
        scale = math.hypot(self.params["sigma0"], self.params["sigma1"])
        z, mass = max_of_normals_grid(n)
        return float(special.expit(self.params["mu0"] + scale * z) @ mass)


class BimodalWorld(World):
    family = "bimodal"
    has_correct = True

    def __init__(self, **params):
        super().__init__(**params)
        self._tables: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def sample_states(self, rng, shape):
        p0 = self.params["p0"]
        return special.expit(rng.normal(special.logit(p0), self.params["sigma0"], size=shape))

    def sample_rewards(self, rng, latents):
        correct = rng.random(latents.shape) < latents
        centre = np.where(correct, self.params["mu_correct"], self.params["mu_wrong"])
        return centre + rng.normal(0.0, self.params["sigma1"], size=latents.shape), correct

    def accuracy_of_states(self, latents):
        return latents

    def state_cdf(self, latents, x):
        mc, mw, s1 = self.params["mu_correct"], self.params["mu_wrong"], self.params["sigma1"]
        p = latents[:, None]
        return p * special.ndtr((x[None, :] - mc) / s1) + (1 - p) * special.ndtr((x[None, :] - mw) / s1)

    def _latent_of_normal(self, z):
        return special.expit(special.logit(self.params["p0"]) + self.params["sigma0"] * z)

    def prefix_score(self, rng, latents):
        """The expected reward of a state with accuracy p, read with an error on the logit of p."""
        p = special.expit(special.logit(np.clip(latents, 1e-12, 1 - 1e-12)) + self.prefix_noise * rng.standard_normal(np.shape(latents)))
        return p * self.params["mu_correct"] + (1 - p) * self.params["mu_wrong"]

    def _value_given_p(self, p: np.ndarray, n: int) -> np.ndarray:
        mc, mw, s1 = self.params["mu_correct"], self.params["mu_wrong"], self.params["sigma1"]
        r = np.linspace(min(mc, mw) - 12 * s1, max(mc, mw) + 12 * s1, 8001)
        cdf = p[:, None] * special.ndtr((r - mc) / s1) + (1 - p[:, None]) * special.ndtr((r - mw) / s1)
        with np.errstate(divide="ignore"):
            powered = np.exp(n * np.log(cdf))
        return r[-1] - integrate.trapezoid(powered, r, axis=1)

    def state_value(self, latents, n):
        if n not in self._tables:
            grid = np.linspace(0.0, 1.0, 2001)
            self._tables[n] = grid, self._value_given_p(grid, n)
        grid, table = self._tables[n]
        return np.interp(latents, grid, table)

    def _prompt_value(self, n):
        # The reward CDF is linear in p, so the prompt is the state with p = E[p].
        nodes, weights = normal_quadrature(self.params["sigma0"])
        mean_p = float(weights @ special.expit(special.logit(self.params["p0"]) + nodes))
        return float(self._value_given_p(np.array([mean_p]), n)[0])


class DiscreteWorld(World):
    family = "discrete"
    reward_bounds = (0.0, 1.0)

    def _cuts(self) -> np.ndarray:
        levels = int(self.params["levels"])
        return np.arange(1, levels) - levels / 2.0  # unit-spaced cut points, centred at 0

    def _values(self) -> np.ndarray:
        return np.linspace(0.0, 1.0, int(self.params["levels"]))

    def sample_states(self, rng, shape):
        return rng.normal(0.0, self.params["sigma0"], size=shape)

    def sample_rewards(self, rng, latents):
        quality = latents + rng.normal(0.0, self.params["sigma1"], size=latents.shape)
        return self._values()[np.searchsorted(self._cuts(), quality)], None

    def _value_given_cdf_scale(self, centre: np.ndarray, scale: float, n: int) -> np.ndarray:
        cdf = special.ndtr((self._cuts() - np.asarray(centre, dtype=float)[..., None]) / scale)
        cdf = np.concatenate([cdf, np.ones(cdf.shape[:-1] + (1,))], axis=-1)  # P(reward <= v_k)
        powered = cdf ** n
        steps = np.diff(np.concatenate([np.zeros(cdf.shape[:-1] + (1,)), powered], axis=-1), axis=-1)
        return steps @ self._values()

    def state_value(self, latents, n):
        return self._value_given_cdf_scale(latents, self.params["sigma1"], n)

    def _reading(self, quality):
        return self._values()[np.searchsorted(self._cuts(), quality)]

    def state_cdf(self, latents, x):
        # P(level <= v): the latent quality plus noise falls below the cut above v
        cuts = np.append(self._cuts(), np.inf)
        below = np.searchsorted(self._values(), x, side="right") - 1  # the highest level <= x
        cut = np.where(below >= 0, cuts[np.maximum(below, 0)], -np.inf)
        return special.ndtr((cut[None, :] - latents[:, None]) / self.params["sigma1"])

    def _prompt_value(self, n):
        scale = math.hypot(self.params["sigma0"], self.params["sigma1"])
        return float(self._value_given_cdf_scale(np.array(0.0), scale, n))


WORLDS = {cls.family: cls for cls in (GaussianWorld, HeavyWorld, BoundedWorld, BimodalWorld, DiscreteWorld)}


# A world's rewards are of the order of its parameters: beyond this their statistics overflow a float
# (sigma0 = 1e300 did, after the whole replay).
PARAM_LIMIT = 1e6
MIN_SCALE = 1e-100  # the smallest sigma0 or sigma1
MAX_LEVELS = 10_000  # a discrete world holds arrays of its levels: 1e9 of them ran out of memory


def make_world(family: str, **overrides: float) -> World:
    """The world of ``family`` with its default parameters updated by ``overrides`` (validated)."""
    if family not in WORLDS:
        raise ConfigError(f"unknown world family {family!r}; expected one of {sorted(WORLDS)}")
    params = dict(FAMILY_PARAMS[family])
    noises = {}
    for name, default in ((PREFIX_NOISE, DEFAULT_PREFIX_NOISE), (PARTIAL_NOISE, DEFAULT_PARTIAL_NOISE)):
        noises[name] = float(overrides.pop(name, default))
        if not 0 <= noises[name] <= PARAM_LIMIT:
            raise ConfigError(f"world parameter {name} must be a number from 0 to {PARAM_LIMIT:.0e}, got {noises[name]!r}")
    for key, value in overrides.items():
        if key not in params:
            raise ConfigError(f"unknown parameter {key!r} for world {family!r}; expected one of "
                              f"{sorted([*params, PREFIX_NOISE, PARTIAL_NOISE])}")
        value = float(value)
        if not abs(value) <= PARAM_LIMIT:
            raise ConfigError(f"world parameter {key}={value!r} must be a finite number within +-{PARAM_LIMIT:.0e}")
        params[key] = value
    for key in ("sigma0", "sigma1"):  # heavy's tail integrals overflow in units of sigma1 = 1e-150
        if key in params and not MIN_SCALE <= params[key]:
            raise ConfigError(f"world parameter {key} must be from {MIN_SCALE:.0e} to {PARAM_LIMIT:.0e}, got {params[key]!r}")
    if family == "heavy" and not params["df"] > 1:  # at df <= 1 a Student-t has no mean, nor has its best of n
        raise ConfigError(f"world parameter df must be > 1, got {params['df']!r}")
    if family == "bimodal" and not 0 < params["p0"] < 1:
        raise ConfigError(f"world parameter p0 must be in (0, 1), got {params['p0']!r}")
    if family == "discrete" and not (2 <= params["levels"] <= MAX_LEVELS and params["levels"] == int(params["levels"])):
        raise ConfigError(f"world parameter levels must be an integer from 2 to {MAX_LEVELS}, got {params['levels']!r}")
    return WORLDS[family](**noises, **params)
