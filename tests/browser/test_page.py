"""The home page in a real chromium against a real gunicorn: it loads with no console error, a CSV upload draws the
probabilities, gate heatmaps and memory matrix of the right size with the API's own numbers (read back from the
Plotly graph divs), its curl command answers the same, and a malformed CSV shows the service's located message."""

from __future__ import annotations

import subprocess

import numpy as np
import orjson
import pytest

from tests.browser.chromium import inspect_example, wait_drawn
from tests.browser.conftest import MOTIONS_CLASSES, MOTIONS_CONFUSION
from tests.conftest import CLASS_NAMES, FEATURE_NAMES, HIDDEN, make_stream, write_csv_stream

STEPS = 30


def test_the_home_page_lists_every_version_with_its_manifest(page):
    response = page.goto("/")
    assert response is not None
    assert response.status == 200
    page.wait_for_load_state("networkidle")
    cards = page.locator("article.model")
    assert sorted(cards.evaluate_all("cards => cards.map(c => c.dataset.model)")) == [
        "gru_last",
        "lstm_step",
        "motions",
    ]
    motions = page.locator("article.model[data-model=motions]")
    assert "LSTM, 1 layer × 12 units" in motions.inner_text()
    assert motions.locator(".class-chip").all_text_contents() == MOTIONS_CLASSES
    cells = motions.locator("table.confusion td").all_text_contents()
    assert [int(c) for c in cells] == [v for row in MOTIONS_CONFUSION for v in row]
    report = motions.locator("table.report tr > th:first-child").all_text_contents()
    assert report == ["", *MOTIONS_CLASSES, "macro avg", "weighted avg"]
    assert "bidirectional GRU, 2 layers × 16 units" in page.locator("article.model[data-model=gru_last]").inner_text()
    assert page.evaluate("typeof Plotly.newPlot") == "function"  # served by the service, from the plotly package
    assert page.problems == []


def test_a_csv_upload_draws_the_apis_numbers(page, server, tmp_path):
    features, labels = make_stream(STEPS, seed=9, segment=(8, 12))
    # Columns in another order than the model's, plus a label column: the page picks the features by name.
    csv = write_csv_stream(tmp_path / "upload.csv", features[:, ::-1], labels, FEATURE_NAMES[::-1])
    page.goto("/")
    page.select_option("#model", label="lstm_step · version 1")
    page.set_input_files("#file", str(csv))
    drawn = wait_drawn(page)

    [version] = server.get("/v1/models/lstm_step").json()["versions"]
    assert drawn["classes"] == version["classes"]
    assert sorted(drawn["classes"]) == sorted(CLASS_NAMES)
    assert [len(y) for y in drawn["probabilities"]] == [STEPS] * len(CLASS_NAMES)
    gates = {g["name"]: np.array(g["z"]) for g in drawn["gates"]}
    assert list(gates) == ["input", "forget", "cell", "output", "cell_state", "hidden"]
    assert {name: z.shape for name, z in gates.items()} == dict.fromkeys(gates, (HIDDEN, STEPS))
    assert np.array(drawn["memory"]).shape == (STEPS, STEPS)
    assert len(drawn["horizon"]) == STEPS

    answer = server.post("/v1/models/lstm_step/versions/1/inspect", {"sequence": features.tolist()}).json()
    np.testing.assert_allclose(np.array(drawn["probabilities"]).T, answer["probabilities"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(gates["forget"].T, answer["layers"][0]["gates"]["forget"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(drawn["memory"], answer["memory"], rtol=0, atol=1e-6)
    assert drawn["layers"] == ["0 forward"]
    assert page.locator("#layer-pick").is_hidden()  # one layer, one direction: nothing to pick

    assert drawn["curl"].startswith(f"curl -s {server.url}/v1/models/lstm_step/versions/1/inspect ")
    done = subprocess.run(["bash", "-c", drawn["curl"]], capture_output=True, timeout=60, check=True)
    np.testing.assert_allclose(orjson.loads(done.stdout)["probabilities"], answer["probabilities"], atol=1e-6)
    assert page.problems == []


def test_a_malformed_csv_shows_the_services_located_message(page, server):
    rows = ["ax,ay,az,gx,gy,gz,label", "1,2,3,4,5,6,idle", "1,2,3,4,5,6,idle", "1,2,3,4,abc,6,idle"]
    page.goto("/")
    page.select_option("#model", label="lstm_step · version 1")
    page.fill("#csv", "\n".join(rows))
    page.click("#run")
    error = page.locator("#error")
    error.wait_for(state="visible")
    api = server.post("/v1/models/lstm_step/inspect", {"sequence": [[1, 2, 3, 4, 5, 6]] * 2 + [[1, 2, 3, 4, "abc", 6]]})
    assert api.status_code == 422
    assert api.json()["error"]["message"] == "sequence[2][4]: expected a number, got a string"
    assert error.locator("code").inner_text() == api.json()["error"]["message"]
    assert "sequence[2] is line 4 of the CSV" in error.inner_text()
    assert page.locator("#results").is_hidden()
    # The browser reports the refused request itself; nothing else may go wrong.
    assert [p for p in page.problems if "status of 422" not in p] == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ax,ay,az,gx,gy\n1,2,3,4,5\n", "sequence[0]: missing features ['gz']"),
        ("1,2,3,4,5,6\n1,2,3,4,5\n", "sequence[1]: expected 6 features, got 5"),
        ("ax,ay,az,gx,gy,gz\n", "sequence: empty: send at least one timestep"),
    ],
    ids=["missing-column", "short-row", "no-rows"],
)
def test_other_malformed_csvs_are_located_by_the_service(page, text, message):
    page.goto("/")
    page.select_option("#model", label="lstm_step · version 1")
    page.fill("#csv", text)
    page.click("#run")
    page.locator("#error").wait_for(state="visible")
    assert message in page.locator("#error code").inner_text()


def test_a_bundled_recording_through_a_model_with_its_features(page):
    page.goto("/")
    page.select_option("#model", label="lstm_step · version 1")
    assert page.locator("#example option").all_text_contents() == ["(none for this model's features)"]
    drawn = inspect_example(page, "motions", 1, "standing-then-running.csv")
    assert drawn["classes"] == MOTIONS_CLASSES
    assert [len(y) for y in drawn["probabilities"]] == [200] * 4
    assert np.array(drawn["memory"]).shape == (200, 200)
    assert page.locator("#csv").input_value().startswith("t,acc_x,acc_y,acc_z,gyro_x,gyro_y,gyro_z,activity\n")
    assert page.problems == []


def test_every_layer_and_direction_of_a_bidirectional_model(page):
    features, _ = make_stream(12, seed=4)
    page.goto("/")
    page.select_option("#model", label="gru_last · version 1")
    page.fill("#csv", "\n".join([",".join(FEATURE_NAMES), *(",".join(map(str, row)) for row in features)]))
    page.click("#run")
    drawn = wait_drawn(page)
    assert drawn["layers"] == ["0 forward", "0 backward", "1 forward", "1 backward"]
    page.select_option("#layer", label="1 backward")
    page.wait_for_function(
        "() => document.querySelector('#gates .gate').layout.title.text.startsWith('layer 1 backward')"
    )
    gates = page.evaluate(
        "() => [...document.querySelectorAll('#gates .gate')].map((d) => [d.dataset.name, d.data[0].z.length])"
    )
    assert gates == [["reset", HIDDEN], ["update", HIDDEN], ["new", HIDDEN], ["hidden", HIDDEN]]
    assert page.problems == []
