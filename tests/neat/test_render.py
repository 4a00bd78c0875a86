"""The vectorised CPPN renderer equals neat-python's per-pixel net.activate; the config is complete."""

import random

import neat
import numpy as np
import pytest

from harness.attacks import neat as hn
from harness.errors import BenchUserError


def _evolved_population(*, outputs=1, all_functions=False, seed=3, generations=12):
    """Genomes after a few generations with random fitness: hidden nodes, disabled links, mixed functions."""
    settings = hn.load_neat_settings()
    if all_functions:
        g = dict(settings["DefaultGenome"])
        g.update(activation_options=list(hn._NP_ACTIVATIONS), aggregation_options=list(hn._NP_AGGREGATIONS),
                 aggregation_default="random", aggregation_mutate_rate=0.3, node_add_prob=0.5)
        settings = dict(settings, DefaultGenome=g)
    cfg = hn.neat_config(settings, num_outputs=outputs, pop_size=12, fitness_threshold=2.0, seed=seed)
    rng = random.Random(seed)
    state = random.getstate()
    try:
        pop = neat.Population(cfg)

        def fitness(genomes, config):
            for _, gnm in genomes:
                gnm.fitness = rng.random()

        pop.run(fitness, generations)
    finally:
        random.setstate(state)
    return cfg, list(pop.population.values())


def test_cppn_inputs_grid():
    inp = hn.cppn_inputs(3, 4)
    assert inp.shape == (4, 12)
    x, y, r, b = inp.reshape(4, 3, 4)
    np.testing.assert_allclose(x[0], np.linspace(-1, 1, 4))
    np.testing.assert_allclose(y[:, 0], np.linspace(-1, 1, 3))
    np.testing.assert_allclose(r, np.sqrt(x**2 + y**2))
    assert (b == 1).all()


@pytest.mark.parametrize("outputs", [1, 3])
def test_render_shape_and_range(outputs):
    cfg, genomes = _evolved_population(outputs=outputs, generations=3)
    batch = hn.render_genomes(genomes, cfg, height=9, width=7)
    assert tuple(batch.shape) == (len(genomes), outputs, 9, 7)
    assert batch.dtype.is_floating_point
    assert float(batch.min()) >= 0.0 and float(batch.max()) <= 1.0


@pytest.mark.parametrize("outputs,all_functions", [(1, False), (3, True)])
def test_vectorised_equals_per_pixel_activate(outputs, all_functions):
    cfg, genomes = _evolved_population(outputs=outputs, all_functions=all_functions)
    inp = hn.cppn_inputs(6, 5)
    compared = hidden = 0
    for g in genomes:
        net = neat.nn.FeedForwardNetwork.create(g, cfg)
        try:
            ref = np.array([net.activate(list(inp[:, j])) for j in range(inp.shape[1])]).T
        except (OverflowError, ValueError):  # square/cube/exp overflow in pure Python: numpy gives inf
            continue
        out = hn.evaluate_network(net, inp)
        assert out.shape == ref.shape == (outputs, 30)
        np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12, equal_nan=True)
        img = hn.render_network(net, height=6, width=5)
        np.testing.assert_allclose(img.reshape(outputs, -1), np.nan_to_num(np.clip(ref, 0, 1)), rtol=1e-6, atol=1e-7)
        compared += 1
        hidden += len(net.node_evals) > outputs
    assert compared >= len(genomes) // 2
    assert hidden > 0  # the comparison covered networks with hidden nodes


def test_unknown_activation_is_rejected():
    cfg, genomes = _evolved_population(generations=1)
    net = neat.nn.FeedForwardNetwork.create(genomes[0], cfg)
    node, _act, *rest = net.node_evals[0]

    def custom(z):
        return z

    net.node_evals[0] = (node, custom, *rest)
    with pytest.raises(ValueError, match="no vectorised form"):
        hn.evaluate_network(net, hn.cppn_inputs(2, 2))


def test_neat_toml_sets_every_key_explicitly():
    """neat-python 2.0 wants every key explicit: the shipped file names every parameter its parser knows."""
    settings = hn.load_neat_settings()
    cfg = hn.neat_config(settings, num_outputs=1, pop_size=4, fitness_threshold=0.9, seed=0)
    known = {
        "NEAT": {p.name for p in neat.Config._Config__params},
        "DefaultGenome": {p.name for p in cfg.genome_config._params},
        "DefaultSpeciesSet": {p.name for p in cfg.species_set_config._params},
        "DefaultStagnation": {p.name for p in cfg.stagnation_config._params},
        "DefaultReproduction": {p.name for p in cfg.reproduction_config._params},
    }
    for section, names in known.items():
        given = set(settings[section]) | set(hn.HARNESS_KEYS.get(section, ()))
        assert names - given == set(), f"[{section}] lacks {sorted(names - given)}"
    assert cfg.genome_config.initial_connection == "full_direct"
    assert cfg.genome_config.num_inputs == 4 and cfg.genome_config.feed_forward


def test_harness_keys_may_not_be_set_in_the_toml():
    settings = hn.load_neat_settings()
    bad = dict(settings, NEAT=dict(settings["NEAT"], pop_size=3))
    with pytest.raises(BenchUserError, match="pop_size"):
        hn.neat_config(bad, num_outputs=1, pop_size=4, fitness_threshold=0.9, seed=0)
    typo = dict(settings, DefaultGenome=dict(settings["DefaultGenome"], node_add_probability=0.1))
    with pytest.raises(BenchUserError, match="node_add_probability"):
        hn.neat_config(typo, num_outputs=1, pop_size=4, fitness_threshold=0.9, seed=0)
