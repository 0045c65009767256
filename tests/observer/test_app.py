"""The web app through FastAPI's test client (and one real server for raw, unnormalised paths)."""

from __future__ import annotations

import http.client
import re
import socket
import sqlite3
import threading
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from dermadv.errors import ConfigError, RunError  # noqa: E402
from dermadv.observer.app import allowed_hosts, create_app  # noqa: E402
from dermadv.observer.storage import StudyDB  # noqa: E402
from dermadv.observer.study import Invitation, Study, invite_observer, load_answer_key  # noqa: E402

CURRENT_ITEM = re.compile(r'name="item_id" value="([0-9a-f]{32})"')


def _client(study_dir: Path) -> TestClient:
    """A test client that asks for the study's loopback host, as a browser on a local link does."""
    return TestClient(create_app(study_dir), base_url="http://127.0.0.1")


def _current_item(client: TestClient, token: str) -> str:
    page = client.get(f"/s/{token}/rate")
    assert page.status_code == 200, page.text
    match = CURRENT_ITEM.search(page.text)
    assert match, "rating page has no item"
    return match.group(1)


def _answer(client: TestClient, token: str, item_id: str, **form: str) -> int:
    data = {"item_id": item_id, "answer": "yes", "confidence": "3", **form}
    return client.post(f"/s/{token}/answer", data=data, follow_redirects=False).status_code


def _rows(study: Study) -> list[tuple]:
    with sqlite3.connect(study.db_path) as conn:
        return conn.execute("SELECT * FROM answers ORDER BY observer_id, item_id").fetchall()


@pytest.fixture()
def study(make_study) -> Study:
    return make_study(n=6)


@pytest.fixture()
def observer(study: Study) -> Invitation:
    return invite_observer(study.path, "Observer A")


@pytest.fixture()
def client(study: Study) -> TestClient:
    return _client(study.path)


def test_rating_page_shows_current_item_progress_and_controls(client, observer, study) -> None:
    start = client.get(f"/s/{observer.token}")
    assert start.status_code == 200 and "Observer A" in start.text and "0 of 6 answered" in start.text
    page = client.get(f"/s/{observer.token}/rate")
    assert page.status_code == 200
    assert 'progress max="6" value="0"' in page.text and "Image 1 of 6" in page.text
    for control in ('value="yes"', 'value="no"', 'name="confidence" value="5"', 'name="diagnosis"', 'value="mel"'):
        assert control in page.text
    item_id = CURRENT_ITEM.search(page.text).group(1)
    assert item_id in study.item_ids
    image = client.get(f"/s/{observer.token}/image/{item_id}")
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert image.content == study.image_path(item_id).read_bytes()


def test_security_headers(client, observer) -> None:
    page = client.get(f"/s/{observer.token}/rate")
    assert page.headers["referrer-policy"] == "same-origin"  # no token to other sites; Origin on our own POST
    assert page.headers["cache-control"] == "no-store"
    assert "default-src 'none'" in page.headers["content-security-policy"]
    nonce = re.search(r"script-src 'nonce-([^']+)'", page.headers["content-security-policy"]).group(1)
    assert f'<script nonce="{nonce}">' in page.text


@pytest.mark.parametrize("token", ["", "x", "A" * 43, "../answer_key.json", "%2e%2e", "A" * 500])
def test_nothing_without_a_valid_token(client, study, observer, token) -> None:
    item_id = study.item_ids[0]
    for path in (f"/s/{token}", f"/s/{token}/rate", f"/s/{token}/done", f"/s/{token}/image/{item_id}"):
        response = client.get(path, follow_redirects=False)
        assert 400 <= response.status_code < 500, path
        assert "image/png" not in response.headers.get("content-type", "")
    assert _answer(client, token, item_id) in (404, 405)
    assert _rows(study) == []


TRAVERSALS = [
    "../answer_key.json",
    "..%2Fanswer_key.json",
    "%2e%2e%2fanswer_key.json",
    "%2e%2e/%2e%2e/answer_key.json",
    "..%5c..%5canswer_key.json",
    "/etc/passwd",
    "%2Fetc%2Fpasswd",
    "answers.sqlite",
    "study.json",
    "images",
    "0" * 32,
    "{item}.png",
    "{item}/../../answer_key.json",
    "{item}%00",
    "{item}%0A",
    "{ITEM}",
]


@pytest.mark.parametrize("attempt", TRAVERSALS)
def test_traversal_and_unknown_items_are_refused(client, study, observer, attempt) -> None:
    item_id = study.item_ids[0]
    attempt = attempt.format(item=item_id, ITEM=item_id.upper())
    key_text = (study.path / "answer_key.json").read_text()
    for path in (f"/s/{observer.token}/image/{attempt}", f"/s/{observer.token}/{attempt}", f"/{attempt}"):
        response = client.get(path, follow_redirects=False)
        assert 400 <= response.status_code < 500, path
        assert "perturbed" not in response.text and key_text not in response.text
    assert _answer(client, observer.token, attempt) == 404
    assert _rows(study) == []


def test_raw_unnormalised_paths_on_a_real_server(study, observer, live_server) -> None:
    key_bytes = (study.path / "answer_key.json").read_bytes()
    with live_server(create_app(study.path)) as url:
        host, port = urlsplit(url).hostname, urlsplit(url).port
        for raw in (
            f"/s/{observer.token}/image/../../answer_key.json",
            f"/s/{observer.token}/image/../../../../../../etc/passwd",
            f"/s/{observer.token}/image/%2e%2e/%2e%2e/answer_key.json",
            "/../answer_key.json",
            f"/s/{observer.token}/image/{study.item_ids[0]}",  # control: this one must work
        ):
            with socket.create_connection((host, port), timeout=5) as sock:
                sock.sendall(f"GET {raw} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
                reply = b""
                while chunk := sock.recv(65536):
                    reply += chunk
            status = int(reply.split(b" ", 2)[1])
            if raw.endswith(study.item_ids[0]):
                assert status == 200 and reply.endswith(study.image_path(study.item_ids[0]).read_bytes())
            else:
                assert 400 <= status < 500, raw
                assert b"perturbed" not in reply and key_bytes not in reply and b"root:" not in reply


def test_2afc_serves_both_sides_only(make_study) -> None:
    study = make_study(n=4, design="2afc")
    token = invite_observer(study.path, "Observer A").token
    client = _client(study.path)
    item_id = _current_item(client, token)
    page = client.get(f"/s/{token}/rate").text
    assert 'value="left"' in page and 'value="right"' in page and 'name="diagnosis"' not in page
    for side in ("left", "right"):
        response = client.get(f"/s/{token}/image/{item_id}/{side}")
        assert response.status_code == 200 and response.content == study.image_path(item_id, side).read_bytes()
    for bad in (f"/s/{token}/image/{item_id}", f"/s/{token}/image/{item_id}/both", f"/s/{token}/image/{item_id}/..%2F"):
        assert client.get(bad).status_code == 404
    assert _answer(client, token, item_id, answer="yes") == 422
    assert _answer(client, token, item_id, answer="left", diagnosis="mel") == 422
    assert _rows(study) == []
    assert _answer(client, token, item_id, answer="left") == 303
    assert len(_rows(study)) == 1


def test_answer_is_committed_before_the_next_page_and_final(client, study, observer) -> None:
    item_id = _current_item(client, observer.token)
    response = client.post(
        f"/s/{observer.token}/answer",
        data={"item_id": item_id, "answer": "yes", "confidence": "4", "diagnosis": "mel"},
        follow_redirects=False,
    )
    assert response.status_code == 303 and response.headers["location"] == f"/s/{observer.token}/rate"
    rows = _rows(study)  # a separate connection sees it: committed
    assert len(rows) == 1 and rows[0][1:5] == (item_id, "yes", 4, "mel")
    # the same item again, with other values: refused, nothing changes
    assert _answer(client, observer.token, item_id, answer="no", confidence="1") == 409
    assert _rows(study) == rows
    assert _current_item(client, observer.token) != item_id


@pytest.mark.parametrize(
    "form",
    [
        {"answer": "maybe"},
        {"answer": ""},
        {"confidence": "0"},
        {"confidence": "6"},
        {"confidence": "abc"},
        {"confidence": "3.0"},
        {"confidence": " 3"},
        {"confidence": "3 "},
        {"confidence": ""},
        {"diagnosis": "melanoma"},
        {"diagnosis": "../mel"},
    ],
)
def test_bad_submissions_are_4xx_and_store_nothing(client, study, observer, form) -> None:
    item_id = _current_item(client, observer.token)
    assert _answer(client, observer.token, item_id, **form) == 422
    assert _rows(study) == []
    assert _current_item(client, observer.token) == item_id


def test_only_the_current_item_can_be_answered(client, study, observer) -> None:
    item_id = _current_item(client, observer.token)
    other = next(i for i in study.item_ids if i != item_id)
    assert _answer(client, observer.token, other) == 409
    assert _rows(study) == []
    response = client.post(f"/s/{observer.token}/answer", data={"answer": "yes"}, follow_redirects=False)
    assert response.status_code == 404  # no item id
    response = client.get(f"/s/{observer.token}/answer")
    assert response.status_code == 405


def test_resume_after_restart_and_completion(study, observer) -> None:
    first = _client(study.path)
    answered = []
    for _ in range(3):
        item_id = _current_item(first, observer.token)
        assert _answer(first, observer.token, item_id) == 303
        answered.append(item_id)
    del first
    restarted = _client(study.path)  # a new app on the same database file
    start = restarted.get(f"/s/{observer.token}")
    assert "3 of 6 answered" in start.text and "Continue" in start.text
    page = restarted.get(f"/s/{observer.token}/rate").text
    assert "Image 4 of 6" in page
    assert CURRENT_ITEM.search(page).group(1) not in answered
    while (response := restarted.get(f"/s/{observer.token}/rate", follow_redirects=False)).status_code == 200:
        assert _answer(restarted, observer.token, CURRENT_ITEM.search(response.text).group(1)) == 303
    assert response.status_code == 303 and response.headers["location"].endswith("/done")
    done = restarted.get(f"/s/{observer.token}/done")
    assert done.status_code == 200 and "Thank you" in done.text
    assert _answer(restarted, observer.token, study.item_ids[0]) == 409
    assert len(_rows(study)) == 6


def test_observers_are_independent_and_concurrent(client, study, observer) -> None:
    other = invite_observer(study.path, "Observer B")
    errors: list[BaseException] = []

    def run(token: str) -> None:
        try:
            local = _client(study.path)
            for _ in range(study.n_items):
                assert _answer(local, token, _current_item(local, token)) == 303
        except BaseException as e:  # noqa: BLE001 - reported in the main thread
            errors.append(e)

    threads = [threading.Thread(target=run, args=(t,)) for t in (observer.token, other.token)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    counts = {o.name: o.answered for o in StudyDB(study.db_path).observers()}
    assert counts == {"Observer A": 6, "Observer B": 6}


def test_pages_never_reveal_the_key(client, study, observer) -> None:
    key = load_answer_key(study.path)
    seen = ""
    while (response := client.get(f"/s/{observer.token}/rate", follow_redirects=False)).status_code == 200:
        seen += response.text
        assert _answer(client, observer.token, CURRENT_ITEM.search(response.text).group(1)) == 303
    for entry in key.values():
        assert entry.image_id not in seen
    assert "perturbed" not in seen and "clean" not in seen.lower().replace("clean images", "")


def test_app_needs_a_study(tmp_path: Path, study) -> None:
    with pytest.raises(RunError, match="not a study folder"):
        create_app(tmp_path)
    study.db_path.unlink()
    with pytest.raises(RunError, match="not found"):
        create_app(study.path)


# --- nothing but the pixels, and hardening ---


@pytest.mark.parametrize("design", ["single", "2afc"])
def test_images_differ_only_in_their_pixels(make_study, design: str) -> None:
    """Same size and the same headers for every image of a study; no ETag or Last-Modified to order them by."""
    study = make_study(n=8, design=design, perturbed_share=0.5)
    token = invite_observer(study.path, "Observer A").token
    client = _client(study.path)
    seen = set()
    for item_id in study.item_ids:
        for suffix in [""] if design == "single" else ["/left", "/right"]:
            response = client.get(f"/s/{token}/image/{item_id}{suffix}")
            assert response.status_code == 200
            headers = {k: v for k, v in response.headers.items() if k != "date"}
            assert not {"etag", "last-modified", "accept-ranges"} & set(headers)
            assert int(headers["content-length"]) == len(response.content)
            seen.add(tuple(sorted(headers.items())))
    assert len(seen) == 1, seen


def test_rating_page_repeats_instruction_and_keys(client, observer, make_study) -> None:
    page = client.get(f"/s/{observer.token}/rate").text
    instruction = page[page.index('id="instruction"') : page.index('id="viewer"')]
    assert "Was this image altered?" in instruction and "Keys:" in instruction
    for key in ("<kbd>Y</kbd>", "<kbd>N</kbd>", "<kbd>1</kbd>", "<kbd>5</kbd>", "<kbd>D</kbd>", "<kbd>Enter</kbd>"):
        assert key in instruction
    study = make_study(n=2, design="2afc")
    token = invite_observer(study.path, "Observer A").token
    page = _client(study.path).get(f"/s/{token}/rate").text
    instruction = page[page.index('id="instruction"') : page.index('id="viewer"')]
    assert (
        "Which of the two images was" in instruction and "<kbd>L</kbd>" in instruction and "<kbd>R</kbd>" in instruction
    )


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Origin": "http://127.0.0.1:9999"},
        {"Origin": "https://127.0.0.1"},
        {"Referer": "http://evil.example/s/page"},
    ],
    ids=["other-site", "null", "other-port", "other-scheme", "referer-only"],
)
def test_cross_site_answers_are_refused(client, study, observer, headers) -> None:
    item_id = _current_item(client, observer.token)
    data = {"item_id": item_id, "answer": "yes", "confidence": "3"}
    response = client.post(f"/s/{observer.token}/answer", data=data, headers=headers, follow_redirects=False)
    assert response.status_code == 403 and "another web page" in response.text
    assert _rows(study) == []
    same_site = {"Origin": "http://127.0.0.1", "Referer": f"http://127.0.0.1/s/{observer.token}/rate"}
    response = client.post(f"/s/{observer.token}/answer", data=data, headers=same_site, follow_redirects=False)
    assert response.status_code == 303 and len(_rows(study)) == 1


@pytest.mark.parametrize("host", ["evil.example", "127.0.0.1.evil.example", "attacker:8000"])
def test_unknown_host_headers_are_refused(study, observer, host) -> None:
    client = TestClient(create_app(study.path), base_url=f"http://{host}")
    response = client.get(f"/s/{observer.token}/rate")
    assert response.status_code == 400 and "Observer A" not in response.text
    assert client.get(f"/s/{observer.token}/image/{study.item_ids[0]}").status_code == 400
    named = TestClient(
        create_app(study.path, hosts=allowed_hosts("0.0.0.0", [host.split(":")[0]])), base_url=f"http://{host}"
    )
    assert named.get(f"/s/{observer.token}/rate").status_code == 200


def test_allowed_hosts() -> None:
    assert set(allowed_hosts("127.0.0.1")) == {"127.0.0.1", "localhost", "::1", "[::1]"}
    assert allowed_hosts("study.example.org") == ("study.example.org",)
    assert allowed_hosts("0.0.0.0", ["Study.Example.org", "10.0.0.5"]) == ("study.example.org", "10.0.0.5")
    assert "[fe80::1]" in allowed_hosts("fe80::1")
    with pytest.raises(ConfigError, match="--allowed-host"):
        allowed_hosts("0.0.0.0")


@pytest.mark.parametrize("what", ["image", "folder"])
def test_symlinks_are_never_followed(make_study, what: str) -> None:
    study = make_study(n=2)
    token = invite_observer(study.path, "Observer A").token
    item_id = study.item_ids[0]
    key = study.path / "answer_key.json"
    if what == "image":
        study.image_path(item_id).unlink()
        study.image_path(item_id).symlink_to(key)
    else:  # the images folder replaced by a link to a folder holding a copy of the key under the image's name
        elsewhere = study.path.parent / "elsewhere"
        elsewhere.mkdir()
        (elsewhere / f"{item_id}.png").symlink_to(key)
        images = study.path / "images"
        images.rename(study.path.parent / "images-moved")
        images.symlink_to(elsewhere)
    response = _client(study.path).get(f"/s/{token}/image/{item_id}")
    assert response.status_code == 404
    assert b"image_id" not in response.content and key.read_bytes() not in response.content


@pytest.mark.parametrize("what", ["key in place of an image", "image with a second name", "not a png"])
def test_only_the_files_the_study_wrote_are_served(make_study, what: str) -> None:
    """A hard link to the answer key in images/ is not served as an image."""
    study = make_study(n=2)
    token = invite_observer(study.path, "Observer A").token
    item_id = study.item_ids[0]
    image, key = study.image_path(item_id), study.path / "answer_key.json"
    if what == "key in place of an image":
        image.unlink()
        image.hardlink_to(key)
    elif what == "image with a second name":  # a PNG, but a file the study did not write alone
        (study.path / "copy.png").hardlink_to(image)
    else:
        image.write_bytes(key.read_bytes())
    (study.path / "images" / "answer_key.json").hardlink_to(key)
    client = _client(study.path)
    response = client.get(f"/s/{token}/image/{item_id}")
    assert response.status_code == 404
    assert b"image_id" not in response.content and key.read_bytes() not in response.content
    for name in ("answer_key.json", "answer_key", "..%2Fanswer_key.json"):
        listed = client.get(f"/s/{token}/image/{name}")
        assert listed.status_code == 404 and b"image_id" not in listed.content
    other = client.get(f"/s/{token}/image/{study.item_ids[1]}")
    assert other.status_code == 200 and other.content.startswith(b"\x89PNG")


def test_head_is_answered_like_get_without_a_body(client, study, observer, live_server) -> None:
    item_id = study.item_ids[0]
    for path in (f"/s/{observer.token}", f"/s/{observer.token}/image/{item_id}"):
        get, head = client.get(path), client.head(path)
        assert head.status_code == get.status_code == 200 and head.content == b""
        assert head.headers["content-length"] == get.headers["content-length"]
        assert head.headers["content-type"] == get.headers["content-type"]
    assert client.head(f"/s/{'A' * 43}").status_code == 404
    with live_server(create_app(study.path)) as url:  # a real server: uvicorn must accept a body-less reply
        conn = http.client.HTTPConnection(urlsplit(url).hostname, urlsplit(url).port, timeout=10)
        conn.request("HEAD", f"/s/{observer.token}/image/{item_id}")
        response = conn.getresponse()
        assert response.status == 200 and response.read() == b""
        assert int(response.getheader("content-length")) == study.image_path(item_id).stat().st_size
        conn.request("GET", f"/s/{observer.token}/image/{item_id}")  # the connection is still usable
        assert conn.getresponse().read() == study.image_path(item_id).read_bytes()


@pytest.mark.parametrize(
    "body, content_type",
    [
        ('{"answer": "yes", "confidence": 3}', "application/json"),
        ("answer=yes&confidence=3", "text/plain"),
        ("", None),
    ],
    ids=["json", "text", "empty"],
)
def test_non_form_bodies_get_their_own_message(client, study, observer, body, content_type) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    response = client.post(f"/s/{observer.token}/answer", content=body, headers=headers, follow_redirects=False)
    assert response.status_code == 415 and "with the form on the rating page" in response.text
    assert _rows(study) == []


@pytest.mark.parametrize(
    "pairs, message",
    [
        ([("answer", "yes"), ("confidence", "3"), ("confidence", "5")], "sent more than once"),
        ([("answer", "yes"), ("answer", "no"), ("confidence", "3")], "sent more than once"),
        ([("answer", "yes"), ("confidence", "3"), ("extra", "1")], "unknown field"),
    ],
    ids=["confidence-twice", "answer-twice", "unknown"],
)
def test_duplicated_and_unknown_fields_are_refused(client, study, observer, pairs, message) -> None:
    item_id = _current_item(client, observer.token)
    body = urlencode([("item_id", item_id), *pairs])
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    response = client.post(f"/s/{observer.token}/answer", content=body, headers=headers, follow_redirects=False)
    assert response.status_code == 422 and message in response.text
    assert _rows(study) == []
