"""The identification web page (`barcodemae serve`, `app.py`): the handler on the example and simulated barcodes, its
table equal to `barcodemae identify -o`, bad input answered with a message, the server's exposure, and the page
driven end to end in a headless Chromium (skipped, with the reason, without the `app` extra, selenium or Chromium).

``BARCODEMAE_SCREENSHOT=docs/serve.png`` saves the browser test's screenshot of the answered page there."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from cli_helpers import run

from barcodemae import app as page_module
from barcodemae.app import MAX_PASTE_CHARS, MAX_REQUEST_BYTES, evidence_figure, load_identifier, neighbours
from barcodemae.cli import main
from barcodemae.identify import read_predictions
from barcodemae.simulate import simulate_barcodes, write_fasta, write_tsv

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
QUERY_IDS = [line[1:].split("|")[0] for line in (EXAMPLES / "queries.fasta").read_text().splitlines() if ">" in line]
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
NO_GRADIO = "the app extra is not installed (pip install 'barcodemae[app]')"


@pytest.fixture(scope="module")
def expected(tmp_path_factory) -> dict[str, Path]:
    """`barcodemae identify` of the example queries against the example reference: its TSV and saved index."""
    folder = tmp_path_factory.mktemp("identify")
    tsv, index = folder / "identified.tsv", folder / "index"
    args = [EXAMPLES / "queries.fasta", "--reference", EXAMPLES / "reference.tsv", "-o", tsv, "--save-index", index]
    assert main(["identify", *map(str, args), "--quiet"]) == 0
    return {"tsv": tsv, "index": index}


@pytest.fixture(scope="module")
def identifier(expected):
    return load_identifier(index=expected["index"])


def test_page_table_is_the_identify_tsv(identifier, expected):
    answer = identifier.identify((EXAMPLES / "queries.fasta").read_text(), None)
    assert answer.tsv.read_bytes() == expected["tsv"].read_bytes()  # the download
    assert answer.rows == read_predictions(expected["tsv"])  # the table
    assert answer.columns == list(answer.rows[0])
    assert [row["query_id"] for row in answer.rows] == [i for i in QUERY_IDS if i != "EMPTY001"]
    assert "13 queries identified" in answer.message and "EMPTY001" in answer.message  # the empty record, listed


def test_simulated_barcodes_pasted_as_table_bare_or_dropped_as_file(identifier, tmp_path):
    records = simulate_barcodes(1, 1, 2, 2, 2, seed=3)
    ids = [record["processid"] for record in records]
    table = write_tsv(records, tmp_path / "queries.tsv")
    fasta = write_fasta(records, tmp_path / "queries.fasta")
    assert [row["query_id"] for row in identifier.identify(table.read_text(), None).rows] == ids
    assert [row["query_id"] for row in identifier.identify(None, str(fasta)).rows] == ids
    bare = "\n".join(record["dna_barcode"] for record in records)
    assert [row["query_id"] for row in identifier.identify(bare, None).rows] == [f"query_{n}" for n in range(1, 9)]


@pytest.mark.parametrize(
    ("text", "file_name", "content", "says"),
    [
        ("", None, None, "No barcodes"),
        (" \n\t\n", None, None, "No barcodes"),
        ("hello, world!", None, None, "no 'dna_barcode' column"),  # a comma: read as a table
        ("hello world!!", None, None, "invalid_characters"),
        (">a\n\n>b\n", None, None, "skipped empty: 2"),
        (">only\nACGTN\n", None, None, "too_short"),
        ("ACGT" * 100 + "\n>late header\n", None, None, "before the first FASTA header"),
        ("", "photo.png", b"\x89PNG\r\n\x1a\n\x00\x00", "unknown file type '.png'"),
        ("", "binary.fasta", b"\x89PNG\r\n\x1a\n\xff\xfe\x00", "not UTF-8"),
        ("", "broken.fasta.gz", b"not gzip at all", "cannot read the file"),
        ("", "notes.tsv", b"just some words\n", "no 'dna_barcode' column"),
        ("", "data.fasta", b"ACGTACGTACGT\n>x\nACGT\n", "before the first FASTA header"),
        (">x\nACGTACGTAC\n", "data.fasta", b">y\nACGT\n", "Both the Barcodes box and a dropped file"),
    ],
)
def test_bad_input_gets_a_message(identifier, tmp_path, text, file_name, content, says):
    upload = None
    if file_name is not None:
        upload = tmp_path / file_name
        upload.write_bytes(content)
    answer = identifier.identify(text, upload)
    assert answer.message.startswith("**Nothing identified.**") and says in answer.message, answer.message
    assert answer.tsv is None and answer.rows == []
    assert "Traceback" not in answer.message and str(tmp_path) not in answer.message  # no server paths


def test_input_caps(identifier, tmp_path, monkeypatch):
    huge = identifier.identify("A" * (100 * 2**20), None)  # a 100 MB paste through the API
    assert "at most 2,000,000 characters" in huge.message
    cut = identifier.identify(">x\n" + "A" * (MAX_PASTE_CHARS - 3), None)  # what the browser's box cut
    assert "reached the limit" in cut.message
    monkeypatch.setattr(page_module, "MAX_QUERIES", 3)
    assert "More than 3 records" in identifier.identify(">a\nACGTACGT\n" * 4, None).message
    monkeypatch.setattr(page_module, "MAX_FILE_BYTES", 10)
    big = tmp_path / "big.fasta"
    big.write_text(">a\nACGTACGTACGT\n")
    assert "big.fasta is larger than" in identifier.identify("", big).message


def test_internal_errors_give_a_message_not_a_traceback(identifier, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(page_module, "identify_file", broken)
    answer = identifier.identify(">a\nACGTACGTACGT\n", None)
    assert "internal error" in answer.message and "a bug" not in answer.message


def test_identifier_on_a_reference_file_or_an_index():
    built = load_identifier(reference=EXAMPLES / "reference.tsv")
    assert built.index.ids and "reference.tsv" in built.describe()
    for wrong in ({}, {"reference": EXAMPLES / "reference.tsv", "index": EXAMPLES}):
        with pytest.raises(ValueError, match="a reference file or an index folder"):
            load_identifier(**wrong)


def test_evidence_is_the_neighbours_and_a_picture(identifier, expected):
    row = read_predictions(expected["tsv"])[0]
    found = neighbours(row)
    assert [reference["id"] for reference in found] == [row[f"neighbor_{n}_id"] for n in range(1, 6)]
    assert found[0]["cosine_similarity"] == row["cosine_similarity"]
    threshold = identifier.threshold_of(row)
    figure = evidence_figure(row, threshold)
    similarity, confidence = figure.axes
    assert threshold in [line.get_xdata()[0] for line in similarity.get_lines()]  # the threshold line
    assert len(confidence.patches) == 4  # order, family, genus, species
    assert "novel-species threshold" in identifier.describe()


# ------------------------------------------------------------------------------------------- command, server
def test_serve_command(monkeypatch, capsys, expected):
    calls = {}
    monkeypatch.setattr(page_module, "load_identifier", lambda **kwargs: calls.setdefault("load", kwargs))
    monkeypatch.setattr(page_module, "launch", lambda *args: calls.setdefault("launch", args))
    monkeypatch.setattr(page_module, "require_gradio", lambda: None)
    code, _, err = run(capsys, "serve", "--index", expected["index"])
    assert code == 0 and "http://127.0.0.1:7860" in err
    assert calls["load"] == {"reference": None, "index": str(expected["index"]), "model": None}
    assert calls["launch"][1:] == ("127.0.0.1", 7860)  # this machine only, unless --host says otherwise


def test_serve_without_gradio_says_how_to_install(monkeypatch, capsys, expected):
    monkeypatch.setattr(page_module.importlib.util, "find_spec", lambda name: None)
    code, _, err = run(capsys, "serve", "--index", expected["index"])
    assert code == 2 and "pip install 'barcodemae[app]'" in err


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server(identifier):
    """The page served on 127.0.0.1 in this process: its base URL."""
    pytest.importorskip("gradio", reason=NO_GRADIO)
    port = free_port()
    page = page_module.launch(identifier, port=port, block=False)
    yield f"http://127.0.0.1:{port}"
    page.close()


def status_of(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_server_serves_the_page_and_no_other_file(server, expected):
    assert status_of(f"{server}/") == 200
    for path in ("/etc/passwd", ROOT / "README.md", expected["index"] / "index.json", expected["tsv"]):
        assert status_of(f"{server}/gradio_api/file={path}") in (403, 404), path
    assert status_of(f"{server}/gradio_api/file=../../../../etc/passwd") in (403, 404)


def test_server_identifies_no_file_it_was_not_sent(server):
    """A request naming a file on the server's disk as the dropped file is refused (Gradio: not uploaded)."""
    from gradio.data_classes import PredictBody

    client = next(name for name in PredictBody.model_fields if name.endswith("_hash"))  # the caller's id field
    with urllib.request.urlopen(f"{server}/config", timeout=30) as response:
        dependencies = json.load(response)["dependencies"]
    identify = next(event["id"] for event in dependencies if event.get("api_name") == "identify")
    on_disk = {"path": str(EXAMPLES / "queries.fasta"), "meta": {"_type": "gradio.FileData"}}
    body = {"data": ["", on_disk], "fn_index": identify, client: "probe", "event_data": None}
    join = urllib.request.Request(
        f"{server}/gradio_api/queue/join", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    urllib.request.urlopen(join, timeout=30).close()
    with urllib.request.urlopen(f"{server}/gradio_api/queue/data?{client}=probe", timeout=60) as events:
        completed = next(json.loads(line[5:]) for line in events if b"process_completed" in line)
    assert completed["success"] is False and "SIM000001" not in json.dumps(completed)


def test_server_refuses_large_or_unsized_bodies_unread(server):
    host, port = server.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    connection.putrequest("POST", "/gradio_api/queue/join")
    connection.putheader("Content-Type", "application/json")
    connection.putheader("Content-Length", str(MAX_REQUEST_BYTES + 1))
    connection.endheaders()  # nothing of the announced body is sent
    assert connection.getresponse().status == 413
    connection.close()
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    connection.request("POST", "/gradio_api/queue/join", body=iter([b"{}"]), encode_chunked=True)
    assert connection.getresponse().status == 411
    connection.close()


@pytest.mark.slow
def test_space_entry_starts_on_a_shipped_index(expected):
    pytest.importorskip("gradio", reason=NO_GRADIO)
    port = free_port()
    env = {**os.environ, "BARCODEMAE_INDEX": str(expected["index"]), "GRADIO_SERVER_PORT": str(port)}
    process = subprocess.Popen([sys.executable, str(ROOT / "app.py")], env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            try:
                assert status_of(f"http://127.0.0.1:{port}/") == 200
                break
            except urllib.error.URLError:
                time.sleep(0.5)
        else:
            pytest.fail(f"app.py did not answer: {process.stderr.read() if process.poll() is not None else ''}")
    finally:
        process.terminate()
        process.wait(timeout=30)


# ------------------------------------------------------------------------------------------- browser
@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless Debian Chromium driven by selenium through the system chromedriver (nothing downloaded)."""
    pytest.importorskip("gradio", reason=NO_GRADIO)
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("chromium and chromedriver are not installed (apt-get install chromium chromium-driver)")
    from selenium.webdriver.chrome.service import Service

    downloads = tmp_path_factory.mktemp("downloads")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1300"):
        options.add_argument(argument)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads)})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.downloads = downloads
    yield driver
    driver.quit()


def fill_box(driver, text: str) -> None:
    """Put ``text`` into the Barcodes box as a paste does (its value set, then an input event)."""
    from selenium.webdriver.common.by import By

    box = driver.find_element(By.CSS_SELECTOR, "#barcodes textarea")
    driver.execute_script(
        "arguments[0].value = arguments[1]; arguments[0].dispatchEvent(new Event('input', {bubbles: true}));",
        box,
        text,
    )


def table_rows(driver) -> list[list[str]]:
    """Every row of the results table, scrolling its viewport (rows are rendered as they come into view)."""
    from selenium.webdriver.common.by import By

    viewport = driver.find_element(By.CSS_SELECTOR, "#results .virtual-table-viewport")
    read = "return Array.from(arguments[0].children).map(cell => cell.textContent.trim());"
    scroll = "arguments[0].scrollTop += arguments[0].clientHeight; return arguments[0].scrollTop;"
    rows: dict[int, list[str]] = {}
    driver.execute_script("arguments[0].scrollTop = 0;", viewport)
    while True:
        for row in driver.find_elements(By.CSS_SELECTOR, "#results [role=row]"):
            index = int(row.get_attribute("aria-rowindex"))
            if index > 1:  # 1 is the header
                rows[index] = driver.execute_script(read, row)
        before = driver.execute_script("return arguments[0].scrollTop;", viewport)
        if driver.execute_script(scroll, viewport) == before:
            return [rows[index] for index in sorted(rows)]


def save_screenshot(driver, path: Path) -> None:
    """The whole page as a PNG of 128 colours (small enough for the README)."""
    from PIL import Image

    size = driver.get_window_size()
    driver.set_window_size(1280, driver.execute_script("return document.documentElement.scrollHeight;") + 120)
    raw = path.with_suffix(".raw.png")
    driver.save_screenshot(str(raw))
    driver.set_window_size(size["width"], size["height"])
    Image.open(raw).convert("RGB").quantize(128).save(path, optimize=True)
    raw.unlink()


def wait_for(driver, condition, timeout: float = 60.0):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(lambda _: condition())


@pytest.mark.slow
def test_browser_pastes_the_examples_and_reads_every_query_back(browser, server, expected):
    from selenium.webdriver.common.by import By

    browser.get(server)
    wait_for(browser, lambda: browser.find_elements(By.CSS_SELECTOR, "#barcodes textarea"))
    fill_box(browser, (EXAMPLES / "queries.fasta").read_text())
    status = browser.find_element(By.ID, "status")
    started = time.perf_counter()
    browser.find_element(By.ID, "identify").click()
    wait_for(browser, lambda: "queries identified" in status.text)
    print(f"\nthe example queries answered on the page {time.perf_counter() - started:.2f} s after the click")
    page_text = browser.find_element(By.TAG_NAME, "body").text
    assert all(query_id in page_text for query_id in QUERY_IDS)  # EMPTY001 among the skipped records
    expected_rows = read_predictions(expected["tsv"])
    wait_for(browser, lambda: browser.find_elements(By.CSS_SELECTOR, "#picture img"))
    assert expected_rows[0]["neighbor_1_id"] in browser.find_element(By.ID, "evidence").text
    if os.environ.get("BARCODEMAE_SCREENSHOT"):
        save_screenshot(browser, Path(os.environ["BARCODEMAE_SCREENSHOT"]))
    assert table_rows(browser) == [list(row.values()) for row in expected_rows]  # the page's table is the TSV

    browser.find_element(By.ID, "download").click()
    downloaded = browser.downloads / "identified.tsv"
    wait_for(browser, downloaded.is_file, timeout=30)
    assert downloaded.read_bytes() == expected["tsv"].read_bytes()


@pytest.mark.slow
def test_browser_cuts_an_oversized_paste_and_says_so(browser, identifier, monkeypatch):
    """The box keeps at most MAX_PASTE_CHARS (here 1,000) of a paste; the page says the input reached the limit."""
    from selenium.webdriver.common.by import By

    monkeypatch.setattr(page_module, "MAX_PASTE_CHARS", 1000)
    port = free_port()
    page = page_module.launch(identifier, port=port, block=False)
    try:
        browser.get(f"http://127.0.0.1:{port}")
        wait_for(browser, lambda: browser.find_elements(By.CSS_SELECTOR, "#barcodes textarea"))
        browser.find_element(By.CSS_SELECTOR, "#barcodes textarea").click()
        browser.execute_cdp_cmd("Input.insertText", {"text": (EXAMPLES / "queries.fasta").read_text()[:5000]})
        browser.find_element(By.ID, "identify").click()
        status = browser.find_element(By.ID, "status")
        wait_for(browser, lambda: "reached the limit" in status.text)
        assert "at most 1,000 characters" in status.text
    finally:
        page.close()


@pytest.mark.slow
def test_browser_shows_bad_input_and_takes_a_dropped_file(browser, server, tmp_path):
    from selenium.webdriver.common.by import By

    browser.get(server)
    wait_for(browser, lambda: browser.find_elements(By.CSS_SELECTOR, "#barcodes textarea"))
    fill_box(browser, "hello world!!")
    browser.find_element(By.ID, "identify").click()
    status = browser.find_element(By.ID, "status")
    wait_for(browser, lambda: "Nothing identified" in status.text)
    assert "invalid_characters" in status.text and "Traceback" not in browser.page_source

    fill_box(browser, "")
    records = simulate_barcodes(1, 1, 2, 2, 2, seed=4)
    dropped = write_fasta(records, tmp_path / "dropped.fasta")
    browser.find_element(By.CSS_SELECTOR, "#upload input[type=file]").send_keys(str(dropped))
    wait_for(browser, lambda: "dropped" in browser.find_element(By.ID, "upload").text)  # uploaded, listed
    browser.find_element(By.ID, "identify").click()
    wait_for(browser, lambda: "8 queries identified from dropped.fasta" in status.text)
    assert [row[0] for row in table_rows(browser)] == [record["processid"] for record in records]
