"""Ranking drills (movierec.drills `ranking`, applied by movierec.serving.ModelHolder): a worse
list at the same cost, and the simulator's users watching less of a list the worse it is for them
(what lets online quality tell a ranking drill from its source; the release loop itself is
tests/test_release_online_quality.py)."""
from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime

import numpy as np
import pytest

from movierec.drills import Drill, register_drill_version
from movierec.registry import Registry
from movierec.serving import ModelHolder
from movierec.store import LocalDirectoryStore
from movierec.synthetic import SyntheticWorld
from movierec.training import SVDParams
from tests.fitting import train_model

USERS, MOVIES, SEED = 300, 200, 7
T = datetime(2026, 1, 1, 12, 0, 0)


# -- ranking drills: a worse list at the same cost --------------------------------------------------
@pytest.fixture(scope="module")
def small_model():
    world = SyntheticWorld(n_users=120, n_movies=80, seed=11)
    return train_model(world.sample_ratings(3000), SVDParams(n_factors=4, n_epochs=5, random_state=0))


def holder_serving(tmp_path, model, drill: dict | None) -> ModelHolder:
    from movierec.artifact import save_model

    save_model(model, tmp_path / "m", {"drill": drill} if drill else {})
    sleeps: list[float] = []
    holder = ModelHolder({"MODEL_PATH": str(tmp_path / "m")}, sleep=sleeps.append, chance=lambda: 0.0)
    holder.sleeps = sleeps
    return holder


def test_a_ranking_drill_is_read_from_the_manifest_and_checked():
    from movierec.drills import DrillError

    assert Drill.from_manifest({"drill": {"ranking": "reverse"}}) == Drill(0.0, 0.0, "reverse")
    assert Drill(ranking="shuffle").as_manifest() == {"delay_ms": 0.0, "error_rate": 0.0, "ranking": "shuffle"}
    assert Drill(400, 0).as_manifest() == {"delay_ms": 400, "error_rate": 0}  # older drills read as before
    assert Drill(ranking="reverse").describe() == "DRILL delay 0 ms, error rate 0, ranking reverse"
    for raw, says in (({"ranking": "random"}, "drill ranking must be one of reverse, shuffle"),
                      ({"ranking": 3}, "drill ranking must be one of"),
                      ({"ranking": None}, "needs delay_ms > 0 or error_rate > 0 or a ranking")):
        with pytest.raises(DrillError, match=says):
            Drill.from_manifest({"drill": raw})


def test_a_reverse_drill_serves_the_models_least_preferred_unseen_movies_at_no_extra_delay(tmp_path, small_model):
    holder = holder_serving(tmp_path, small_model, {"ranking": "reverse"})
    model = holder.get()
    user = max(model.user_ids.tolist(), key=lambda u: len(model.recommend(u, model.n_movies)))
    full = model.recommend(user, model.n_movies)  # every unseen movie, best first
    assert len(full) >= 2 * holder.k
    served = holder.recommend(model, user)
    assert served == full[::-1][: holder.k] and len(served) == holder.k
    assert not set(served) & set(full[: holder.k])  # none of the model's own top k
    seen = set(model.movie_ids[model.seen_of_row(model.user_rows(np.array([user]))[0])].tolist())
    assert not set(served) & seen and holder.sleeps == []
    assert "ranking reverse" in holder.describe()


def test_a_shuffle_drill_serves_a_random_k_of_the_same_candidates(tmp_path, small_model):
    holder = holder_serving(tmp_path, small_model, {"ranking": "shuffle"})
    model = holder.get()
    user = int(model.user_ids[1])
    full = model.recommend(user, model.n_movies)
    answers = [holder.recommend(model, user) for _ in range(5)]
    assert all(len(a) == len(set(a)) == holder.k and set(a) <= set(full) for a in answers)
    assert len({tuple(a) for a in answers}) > 1  # random, not the model's order
    rng = random.Random(3)
    assert Drill(ranking="shuffle").rerank(full, 5, rng) == random.Random(3).sample(full, 5)


def test_a_ranking_drill_version_is_a_copy_of_its_source_with_the_flag(tmp_path, small_model):
    store = LocalDirectoryStore(tmp_path / "store")
    registry = Registry(store)
    source = registry.register_model(small_model, now=datetime(2026, 1, 1, tzinfo=UTC)).version
    entry = register_drill_version(store, Drill(ranking="reverse"), source=source,
                                   now=datetime(2026, 1, 1, 0, 1, tzinfo=UTC))
    assert entry.sha256 == registry.get(source).sha256
    assert entry.metadata["extra"] == {"drill": {"delay_ms": 0.0, "error_rate": 0.0, "ranking": "reverse"},
                                       "copied_from": source}


def test_the_operator_command_takes_a_ranking_drill():
    from scripts.release import drill_settings, parse_args

    assert drill_settings(None, None, "shuffle") == Drill(ranking="shuffle")
    assert drill_settings(200, None, "reverse") == Drill(200, 0, "reverse")
    assert parse_args(["drill-bad-model", "--ranking", "reverse"]).ranking == "reverse"
    with pytest.raises(SystemExit):
        parse_args(["drill-bad-model", "--ranking", "sideways"])


# -- the simulator's users: a better list for them, more watches -----------------------------------
def test_simulated_users_watch_more_of_a_list_the_better_it_is_for_them():
    """The same users shown lists from best to worst for them: their true top 20, the model's top
    20, a random 20 of the model's candidates (shuffle drill), the model's bottom 20 (reverse
    drill), their true bottom 20. Watch-through falls at every step."""
    from movierec.events import WatchEvent
    from scripts.simulator import Behaviour, Simulation

    world = SyntheticWorld(USERS, MOVIES, seed=SEED)
    model = train_model(world.sample_ratings(15000), SVDParams(n_factors=10, n_epochs=20, random_state=0))
    rng = random.Random(0)

    def true_order(user):
        unseen = model.recommend(user, model.n_movies)
        return [unseen[i] for i in np.argsort(-world.true_score(user, unseen), kind="stable")]

    lists = {
        "true top": lambda u: true_order(u)[:20],
        "model": lambda u: model.recommend(u, 20),
        "shuffle": lambda u: Drill(ranking="shuffle").rerank(model.recommend(u, model.n_movies), 20, rng),
        "reverse": lambda u: Drill(ranking="reverse").rerank(model.recommend(u, model.n_movies), 20),
        "true bottom": lambda u: true_order(u)[::-1][:20],
    }
    shares = {}
    for name, make in lists.items():
        sim = Simulation(world, Behaviour(), seed=1)  # the same users, the same draws, a fresh history
        shown = watched = 0
        for user in sim.known_user_ids:
            movies = make(user)
            plans = sim.on_recommendations(user, movies, T)
            shown += len(movies)
            watched += len({p.item.movie_id for p in plans if isinstance(p.item, WatchEvent)})
        shares[name] = watched / shown
    print(" ".join(f"{k} {v:.3f}" for k, v in shares.items()))
    values = list(shares.values())
    assert all(a > b for a, b in itertools.pairwise(values)), shares
    assert shares["model"] > 1.5 * shares["shuffle"] and shares["shuffle"] > 2 * shares["reverse"]
