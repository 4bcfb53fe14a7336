"""Where to annotate next: diverse ranking, the CSV, the uncertainty layer and VAST nodes.

The ranking must cover every uncertain place before it returns to one (two hot spots ->
suggestions on both, where a plain top-k of the window means lands all k on the hotter one).
The job runs a real tiny network over the mock VAST server's EM; without test-time
augmentation its uncertainty layer must be the binary entropy of its probability layer, and
the server must hold one skeleton node per suggestion at the suggested coordinates.
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from membrane_py.cli import app
from membrane_py.codes import probability_to_u8, u8_to_probability
from membrane_py.geometry import Box
from membrane_py.infer.engine import binary_entropy
from membrane_py.predict.suggest import (
    ANNO_NAME,
    SuggestJob,
    rank_regions,
    read_suggestions,
    run_suggest,
    scored_mip,
    window_means,
    write_suggestions,
)
from membrane_py.segment.instability import instability
from membrane_py.vastapi.client import VastClient
from membrane_py.vastapi.descriptors import read_vsvi
from membrane_py.volumes.open import open_volume
from tests.predict_support import tiny_checkpoint


def _two_hot_spots() -> np.ndarray:
    """A (y, x) map with a strong blob at (40, 40) and a weaker one at (150, 160)."""
    yy, xx = np.mgrid[:200, :200]
    blob = lambda y, x, h: h * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * 15.0 ** 2))  # noqa: E731
    return (blob(40, 40, 1.0) + blob(150, 160, 0.7)).astype(np.float32)


def _near(pick, y, x, side, reach=30) -> bool:
    return abs(pick[2] + side // 2 - y) < reach and abs(pick[3] + side // 2 - x) < reach


def test_ranking_covers_both_hot_spots_not_k_around_one():
    u, side, k = _two_hot_spots(), 16, 4
    picks = rank_regions([(0, u)], k, side, spacing=side)
    assert len(picks) == k
    assert [p[0] for p in picks] == sorted((p[0] for p in picks), reverse=True)
    assert _near(picks[0], 40, 40, side)
    assert any(_near(p, 150, 160, side) for p in picks)
    for i, a in enumerate(picks):  # no two overlap
        for b in picks[i + 1:]:
            assert abs(a[2] - b[2]) >= side or abs(a[3] - b[3]) >= side
    # what the suppression prevents: the k best windows all sit on the hotter spot
    means = window_means(u, side)
    best = np.argsort(means, axis=None)[::-1][:k]
    assert all(_near((0, 0, *divmod(int(i), means.shape[1])), 40, 40, side) for i in best)


def test_ranking_spreads_over_sections_and_avoids_annotated_regions():
    u = _two_hot_spots()
    picks = rank_regions([(0, u), (1, u), (9, u)], 3, 16, spacing=16, z_spacing=3)
    hot = [p for p in picks if _near(p, 40, 40, 16, reach=16)]
    assert sorted(p[1] for p in hot) == [0, 9]  # section 1 is too close to section 0
    first = rank_regions([(0, u)], 1, 16, spacing=16)[0]
    again = rank_regions([(0, u)], 3, 16, spacing=16, avoid=[first[1:]])
    assert all(abs(p[2] - first[2]) >= 16 or abs(p[3] - first[3]) >= 16 for p in again)
    with pytest.raises(ValueError, match="does not fit"):
        rank_regions([(0, u)], 1, 256, spacing=16)


def test_sampled_ranking_picks_in_proportion_to_score_power_and_keeps_the_rules():
    # two sections, each one flat map: section 0 scores 0.8, section 1 scores 0.2
    maps = [(0, np.full((16, 16), 0.8, np.float32)), (1, np.full((16, 16), 0.2, np.float32))]
    firsts = [rank_regions(maps, 1, 16, spacing=16, power=1.0, seed=s)[0][1] for s in range(400)]
    share = firsts.count(0) / len(firsts)  # expected 0.8 / (0.8 + 0.2)
    assert 0.72 < share < 0.88
    steep = [rank_regions(maps, 1, 16, spacing=16, power=8.0, seed=s)[0][1] for s in range(200)]
    assert steep.count(0) / len(steep) > 0.97  # 0.8**8 / (0.8**8 + 0.2**8) ~ 1
    assert rank_regions(maps, 2, 16, 16, power=1.0, seed=3) == \
        rank_regions(maps, 2, 16, 16, power=1.0, seed=3)
    u = _two_hot_spots()
    first = rank_regions([(0, u)], 1, 16, spacing=16)[0]
    for seed in range(5):
        picks = rank_regions([(0, u)], 4, 16, spacing=16, avoid=[first[1:]], power=1.0,
                             seed=seed)
        assert len(picks) == 4
        for i, a in enumerate(picks):
            assert abs(a[2] - first[2]) >= 16 or abs(a[3] - first[3]) >= 16
            for b in picks[i + 1:]:
                assert abs(a[2] - b[2]) >= 16 or abs(a[3] - b[3]) >= 16
    with pytest.raises(ValueError, match="power"):
        rank_regions([(0, u)], 1, 16, spacing=16, power=0.0)


def test_window_means_match_a_direct_mean():
    u = np.random.default_rng(0).random((20, 30))
    m = window_means(u, 5)
    assert m.shape == (16, 26)
    assert m[7, 11] == pytest.approx(u[7:12, 11:16].mean())


def test_suggestions_csv_round_trips(tmp_path):
    from membrane_py.predict.suggest import Suggestion

    rows = [Suggestion(1, 300, 200, 4, 256, 0.812345), Suggestion(2, 90, 1000, 0, 256, 0.5)]
    path = write_suggestions(tmp_path / "s.csv", rows)
    assert path.read_text().splitlines()[0] == "rank,x,y,z,size,score"
    assert read_suggestions(path) == rows
    assert rows[0].box == Box(4, 5, 72, 328, 172, 428)
    (tmp_path / "bad.csv").write_text("rank,x\n1,2\n")
    with pytest.raises(ValueError, match="line 2"):
        read_suggestions(tmp_path / "bad.csv")


@pytest.fixture(scope="module")
def sent(vast_server, tmp_path_factory):
    """A suggest job over the mock server's EM (tiny network, entropy), sent back to it."""
    folder = tmp_path_factory.mktemp("suggest")
    address = f"vast://127.0.0.1:{vast_server.port}"
    job = SuggestJob(checkpoint=str(tiny_checkpoint(folder / "tiny.pt")), source=address,
                     out=str(folder / "out"), k=5, size=64, z_spacing=1, tta=1, device="cpu",
                     vast=address, box=[0, 255, 0, 255, 0, 3], sample_power=None)
    return job, run_suggest(job)


def test_suggest_sends_one_node_per_suggestion(vast_server, sent):
    job, result = sent
    assert len(result.suggestions) == 5 and [s.rank for s in result.suggestions] == [1, 2, 3, 4, 5]
    assert all(0 <= s.z <= 3 and 32 <= s.x <= 224 and 32 <= s.y <= 224
               for s in result.suggestions)
    assert read_suggestions(result.csv) == result.suggestions
    with VastClient(port=vast_server.port) as client:
        names = client.get_layer_names()
        assert names[result.anno_layer] == ANNO_NAME
        client.set_api_layers_enabled(True)
        client.set_selected_api_layer(result.anno_layer)
        assert client.get_anno_object_names()[result.anno_object - 1] == ANNO_NAME
        client.set_selected_anno_object(result.anno_object)
        nodes = client.get_ao_node_data()
    assert [(n.x, n.y, n.z) for n in nodes] == [(s.x, s.y, s.z) for s in result.suggestions]
    rerun = run_suggest(SuggestJob(**{**job.__dict__, "checkpoint": None,
                                      "map": result.map}))
    assert rerun.anno_layer == result.anno_layer  # the suggestions layer is reused
    assert rerun.anno_object != result.anno_object
    assert rerun.suggestions == result.suggestions  # same map, same ranking


def test_uncertainty_layer_is_the_entropy_of_the_probability_with_a_valid_vsvi(sent):
    job, result = sent
    vsvi = read_vsvi(result.map)
    assert (vsvi.target_data_size_x, vsvi.target_data_size_y, vsvi.target_data_size_z) == \
        (256, 256, 8)  # the mock server's volume
    assert vsvi.source_bytes_per_pixel == 1 and vsvi.source_min_s <= 0 <= 3 <= vsvi.source_max_s
    u = open_volume(result.map).read(Box(0, 4, 0, 256, 0, 256))
    p = open_volume(f"{job.out}/probability.vsvi").read(Box(0, 4, 0, 256, 0, 256))
    assert u.dtype == np.uint8 and u.min() >= 1  # every tile written, 0 = missing
    prob, unc = u8_to_probability(p, missing=0.0), u8_to_probability(u, missing=0.0)
    mid = (prob > 0.1) & (prob < 0.9)
    assert mid.mean() > 0.5
    assert np.abs(unc[mid] - binary_entropy(prob[mid])).max() < 0.02


def test_suggest_cli_ranks_a_map_and_refuses_bad_options(sent, tmp_path):
    _, result = sent
    ok = CliRunner().invoke(app, ["suggest", "--map", result.map, "--out",
                                  str(tmp_path / "cli"), "-k", "2", "--size", "64",
                                  "--z-spacing", "1", "--box", "0,255,0,255,0,3", "--top-k"])
    assert ok.exit_code == 0, ok.output
    assert read_suggestions(tmp_path / "cli" / "suggestions.csv") == result.suggestions[:2]
    bad = CliRunner().invoke(app, ["suggest", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "checkpoint" in bad.output
    assert "Traceback" not in bad.output
    big = CliRunner().invoke(app, ["suggest", "--map", result.map, "--out",
                                   str(tmp_path / "y"), "--size", "1024"])
    assert big.exit_code != 0 and "--size" in big.output and "Traceback" not in big.output


def test_suggest_cli_samples_by_uncertainty_power_with_a_seed(sent, tmp_path):
    _, result = sent
    args = ["suggest", "--map", result.map, "-k", "3", "--size", "64", "--z-spacing",
            "1", "--box", "0,255,0,255,0,3", "--sample", "1"]

    def ranked(name: str, *extra: str) -> list:
        r = CliRunner().invoke(app, [*args, "--out", str(tmp_path / name), *extra])
        assert r.exit_code == 0, r.output
        return read_suggestions(tmp_path / name / "suggestions.csv")

    first, again = ranked("a", "--seed", "1"), ranked("b", "--seed", "1")
    assert first == again and len(first) == 3  # seeded: the same draw
    plain = CliRunner().invoke(app, [*args[:-2], "--out", str(tmp_path / "plain")])
    assert plain.exit_code == 0, plain.output  # the default: --sample 1 --seed 0
    assert read_suggestions(tmp_path / "plain" / "suggestions.csv") == ranked("s0", "--seed", "0")
    draws = {tuple((s.x, s.y, s.z) for s in ranked(f"s{seed}", "--seed", str(seed)))
             for seed in range(2, 6)}
    assert len(draws) > 1  # sampled, not the fixed top-k every time
    bad = CliRunner().invoke(app, [*args[:-1], "0", "--out", str(tmp_path / "z")])
    assert bad.exit_code != 0 and "--sample" in bad.output and "Traceback" not in bad.output


def test_suggest_cli_scores_instability_of_a_probability_layer(sent, tmp_path):
    """Cells on a grid of sure membranes; on section 2 one membrane is faint over 20 px: the
    one place where the threshold decides whether two cells are one."""
    p = np.full((4, 256, 256), 0.05, np.float32)
    p[:, 60::64, :] = p[:, :, 60::64] = 0.95
    p[2, 100:120, 124:126] = 0.5
    probability = tmp_path / "probability.tif"
    tifffile.imwrite(probability, probability_to_u8(p), photometric="minisblack")
    args = ["suggest", "--map", str(probability), "--score", "instability", "-k", "2",
            "--size", "64", "--z-spacing", "1", "--top-k"]
    ok = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "i")])
    assert ok.exit_code == 0, ok.output
    got = read_suggestions(tmp_path / "i" / "suggestions.csv")
    assert got[0].z == 2 and got[0].box.y0 <= 100 and got[0].box.y1 >= 120
    assert got[0].box.x0 <= 124 and got[0].box.x1 >= 126 and got[0].score > 0
    assert got[1].score == 0  # nothing else hangs on the threshold
    maps = [instability(u8_to_probability(probability_to_u8(s), missing=0.0)) for s in p]
    picks = rank_regions(enumerate(maps), 2, 64, 64, 1)
    assert [(s.z, s.y - 32, s.x - 32, s.score) for s in got] == \
        [(z, y, x, round(score, 6)) for score, z, y, x in picks]
    _, result = sent
    wrong = CliRunner().invoke(app, [*args[:2], result.map, *args[3:], "--out",
                                     str(tmp_path / "w")])
    assert wrong.exit_code == 2 and "Traceback" not in wrong.output
    assert "is not an 8-bit probability layer" in wrong.output and "probability.vsvi" in \
        wrong.output


def test_instability_is_scored_where_membranes_stay_resolved():
    class Pyramid:
        n_mips, shape = 6, (1, 8192, 8192)

    assert scored_mip(Pyramid(), 256) == 4  # uncertainty: regions 16 px wide
    assert scored_mip(Pyramid(), 256, "instability") == 1  # 4096^2 px, regions 128 px
    assert scored_mip(Pyramid(), 64, "instability") == 0  # regions would shrink below 64 px
    small = Box(0, 1, 0, 2048, 0, 2048)
    assert scored_mip(Pyramid(), 256, "instability", small) == 0


def test_suggest_cli_refuses_an_earlier_other_prediction_unless_overwrite(tmp_path):
    checkpoint = str(tiny_checkpoint(tmp_path / "tiny.pt"))
    args = ["suggest", checkpoint, "--source", "synthetic:3x96x96", "--out",
            str(tmp_path / "s"), "-k", "2", "--size", "32", "--tta", "1", "--device", "cpu"]
    assert CliRunner().invoke(app, args).exit_code == 0
    other = CliRunner().invoke(app, [*args, "--score", "instability"])
    assert other.exit_code == 2 and "--overwrite" in other.output, other.output
    again = CliRunner().invoke(app, [*args, "--score", "instability", "--overwrite"])
    assert again.exit_code == 0, again.output
    assert "probability.vsvi" in again.output
