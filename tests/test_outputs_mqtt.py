"""vbedge.outputs.mqtt against a real broker (Debian's mosquitto, started by each test on a free port):
events arrive as JSON in order, the retained caption and status reach a late subscriber, and the
broker is down at start, stopped and restarted mid-run without captioning noticing."""

import json
import logging
import shutil
import socket
import subprocess
import sys
import threading
import time

import pytest

from vbedge.errors import InvalidInputError, MissingDependencyError
from vbedge.outputs import OutputContext, open_output
from vbedge.outputs.mqtt import MqttOutput, parse_mqtt_uri
from vbedge.pipeline import ClipEvent
from vbedge.sources import SourceEvent

mqtt = pytest.importorskip("paho.mqtt.client", reason="paho-mqtt is not installed (pip install 'vbedge[mqtt]')")

MOSQUITTO = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")
needs_broker = pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto is not installed (.ci/system-deps.sh "
                                                            "installs Debian's mosquitto package)")
TOPIC = "vbedge/test"


def event(i, caption, source="cam0"):
    return ClipEvent(source_id=source, clip_index=i, start=1.5 * i, end=1.5 * (i + 1), leaf=i,
                     token_id=100 + i, token=f"[V:{i}]", caption=caption, clip_caption=f"clip {i}",
                     caption_changed=True, confidence=0.5)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, what, timeout=20.0):
    """Poll ``predicate`` (a bounded wait, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"gave up waiting for {what}")


class Broker:
    """A mosquitto on 127.0.0.1:port that a test can stop and start again on the same port."""

    def __init__(self, folder, persistent=False):
        self.port = free_port()
        self.folder = folder
        self.log = folder / "mosquitto.log"
        lines = [f"listener {self.port} 127.0.0.1", "allow_anonymous true", "user root"]
        if persistent:  # sessions and retained messages survive a restart (saved at exit)
            lines += ["persistence true", f"persistence_location {folder}/", "autosave_interval 0"]
        self.conf = folder / "mosquitto.conf"
        self.conf.write_text("\n".join(lines) + "\n")
        self.process = None

    def start(self):
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=log, stderr=log)

        def listening():
            if self.process.poll() is not None:
                raise AssertionError(f"mosquitto exited: {self.log.read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return True
            except OSError:
                return False

        wait_for(listening, "mosquitto to listen")
        return self

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=20)
        self.process = None


class Subscriber:
    """A paho client that records every message under ``topic`` (and reconnects on its own)."""

    def __init__(self, port, topic=f"{TOPIC}/#", client_id="", persistent=False):
        self.messages = []
        self.subscribed = threading.Event()
        self._lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                  clean_session=not persistent, protocol=mqtt.MQTTv311)
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect_async("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, client, userdata, message):
        with self._lock:
            self.messages.append((message.topic, message.payload.decode("utf-8"), message.retain))

    def on(self, topic):
        with self._lock:
            return [payload for t, payload, _ in self.messages if t == topic]

    def clips(self):
        """Clip indices of the events received, first arrivals only (QoS 1 may deliver twice)."""
        seen = []
        for payload in self.on(f"{TOPIC}/events"):
            clip = json.loads(payload)["clip"]
            if clip not in seen:
                seen.append(clip)
        return seen

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def cleanup():
    things = []
    yield things
    for thing in reversed(things):
        try:
            thing.close() if hasattr(thing, "close") else thing.stop()
        except Exception:  # noqa: BLE001 - cleanup of a failed test
            pass


def latest_retained(port, topic, timeout=10.0):
    """What a new subscriber of ``topic`` gets at once: the retained message (or None)."""
    sub = Subscriber(port, topic)
    try:
        wait_for(lambda: sub.on(topic) or False, f"the retained message on {topic}", timeout=timeout)
        return sub.on(topic)[-1]
    except AssertionError:
        return None
    finally:
        sub.close()


def test_uri_parsing():
    uri = parse_mqtt_uri("mqtt://me:p%40ss@broker.local/home/kitchen?client_id=cam&queue=50")
    assert uri == {"tls": False, "host": "broker.local", "port": 1883, "topic": "home/kitchen", "username": "me",
                   "password": "p@ss", "client_id": "cam", "queue": 50, "ca": None}
    assert parse_mqtt_uri("mqtts://h:9999")["port"] == 9999 and parse_mqtt_uri("mqtts://h")["port"] == 8883
    assert parse_mqtt_uri("mqtt://h")["topic"] == "vbedge"
    assert "p@ss" not in MqttOutput("mqtt://me:p%40ss@h/t").description
    assert isinstance(open_output("mqtt://localhost/x"), MqttOutput)
    for bad, message in [("mqtt:///t", "no broker host"), ("mqtt://h/a/#", "wildcards"),
                         ("mqtt://h:99999/t", "port"), ("mqtt://h/t?qos=2", "unknown option"),
                         ("mqtt://h/t?queue=0", "queue"), ("mqtt://h/t?ca=x.pem", "mqtts")]:
        with pytest.raises(InvalidInputError, match=message):
            MqttOutput(bad)


def test_missing_paho_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "paho.mqtt.client", None)  # import raises ImportError
    with pytest.raises(MissingDependencyError, match=r"pip install 'vbedge\[mqtt\]'"):
        MqttOutput("mqtt://127.0.0.1/t").open(OutputContext(fps=20, sources=("cam0",)))


def test_no_broker_the_queue_is_bounded_and_drops_are_counted_once(caplog, cleanup):
    out = MqttOutput(f"mqtt://127.0.0.1:{free_port()}/{TOPIC}?queue=5")
    cleanup.append(out)
    out.open(OutputContext(fps=20, sources=("cam0",)))   # nobody listens there: open returns anyway
    with caplog.at_level(logging.WARNING, logger="vbedge.outputs"):
        for i in range(20):
            out.write(event(i, "stir"))
    # event 0: source state + event + caption; events 1, 2: one each; 3..19 dropped
    assert out.stats["published"] == 5 and out.stats["dropped"] == 17 and not out.connected
    assert sum("dropping new ones" in r.getMessage() for r in caplog.records) == 1


@needs_broker
def test_events_caption_status_and_a_broker_down_at_start_and_restarted(tmp_path, cleanup):
    broker = Broker(tmp_path, persistent=True).start()
    cleanup.append(broker)
    sub = Subscriber(broker.port, client_id="vbedge-test-sub", persistent=True)
    cleanup.append(sub)
    wait_for(sub.subscribed.is_set, "the subscription")
    broker.stop()                                         # the subscriber's session is saved

    out = MqttOutput(f"mqtt://127.0.0.1:{broker.port}/{TOPIC}", reconnect_min=0.1, reconnect_max=0.5)
    cleanup.insert(0, out)
    out.open(OutputContext(fps=20, sources=("cam0",)))    # the broker is down: captioning starts anyway
    captions = ["cut", "cut", "stir", "stir", "fry", "fry", "fry", "boil", "boil", "plate", "plate", "eat"]
    for i in range(3):
        out.write(event(i, captions[i]))
    assert not out.connected
    broker.start()
    wait_for(lambda: sub.clips() == [0, 1, 2], "the events queued while the broker was down")
    for i in range(3, 6):
        out.write(event(i, captions[i]))
    wait_for(lambda: sub.clips() == list(range(6)), "events 3..5")
    assert json.loads(latest_retained(broker.port, f"{TOPIC}/caption"))["caption"] == "fry"
    assert latest_retained(broker.port, f"{TOPIC}/status") == "online"

    out.source_event("cam0", SourceEvent("disconnected", "camera unplugged", attempt=1, retry_in=0.5))
    broker.stop()                                         # mid-run
    for i in range(6, 9):
        out.write(event(i, captions[i]))                  # returns: queued for the broker
    broker.start()
    wait_for(lambda: out.stats["connects"] == 2, "the output to reconnect")
    for i in range(9, 12):
        out.write(event(i, captions[i]))
    wait_for(lambda: sub.clips() == list(range(12)), "every event, in order, after the restart")
    assert out.stats["dropped"] == 0 and out.stats["disconnects"] == 1
    out.close()
    wait_for(lambda: "offline" in sub.on(f"{TOPIC}/status"), "status offline at close")

    firsts = {}
    for payload in sub.on(f"{TOPIC}/events"):
        row = json.loads(payload)
        firsts.setdefault(row["clip"], row)
    for i in range(12):
        row = dict(firsts[i])
        assert isinstance(row.pop("time"), float)
        assert row == event(i, captions[i]).to_dict()
    shown = [json.loads(p)["caption"] for p in sub.on(f"{TOPIC}/caption")]
    assert [c for j, c in enumerate(shown) if j == 0 or c != shown[j - 1]] == \
           ["cut", "stir", "fry", "boil", "plate", "eat"]
    states = [json.loads(p)["state"] for p in sub.on(f"{TOPIC}/source")]
    assert states[0] == "streaming" and "disconnected" in states and states[-1] == "streaming"


@needs_broker
def test_a_broker_restarted_without_memory_gets_the_latest_caption_again(tmp_path, cleanup):
    broker = Broker(tmp_path, persistent=False).start()
    cleanup.append(broker)
    out = MqttOutput(f"mqtt://127.0.0.1:{broker.port}/{TOPIC}", reconnect_min=0.1, reconnect_max=0.5)
    cleanup.insert(0, out)
    out.open(OutputContext(fps=20, sources=("left", "right")))
    wait_for(lambda: out.connected, "the output to connect")
    out.write(event(0, "cut", "left"))
    out.write(event(0, "stir", "right"))
    assert json.loads(latest_retained(broker.port, f"{TOPIC}/caption/right"))["caption"] == "stir"
    broker.stop()
    broker.start()                                        # retained messages are gone
    wait_for(lambda: out.stats["connects"] == 2, "the output to reconnect")
    assert latest_retained(broker.port, f"{TOPIC}/caption/left", timeout=1.0) is None
    for i in range(1, 20):                                # the same captions: only a republish sends them
        out.write(event(i, "cut", "left"))
        if latest_retained(broker.port, f"{TOPIC}/caption/left", timeout=1.0) is not None:
            break
    left = json.loads(latest_retained(broker.port, f"{TOPIC}/caption/left"))
    assert (left["caption"], left["clip"], left["source"]) == ("cut", 0, "left")
    assert json.loads(latest_retained(broker.port, f"{TOPIC}/source/right"))["state"] == "streaming"
    assert latest_retained(broker.port, f"{TOPIC}/status") == "online"


@needs_broker
def test_caption_sources_into_mqtt_while_the_broker_restarts(small_bundle, tmp_path, cleanup):
    """End to end: the real small bundle captions a frame iterable; the iterable itself stops the
    broker after the first event arrived and starts it again two clips later."""
    pytest.importorskip("cv2")
    from test_pipeline import FPS, moving_shapes

    from vbedge.caption_job import caption_sources
    from vbedge.outputs.files import JsonlOutput

    broker = Broker(tmp_path, persistent=True).start()
    cleanup.append(broker)
    sub = Subscriber(broker.port, client_id="vbedge-e2e-sub", persistent=True)
    cleanup.append(sub)
    wait_for(sub.subscribed.is_set, "the subscription")
    out = MqttOutput(f"mqtt://127.0.0.1:{broker.port}/{TOPIC}", reconnect_min=0.1, reconnect_max=0.5)
    per_clip = 16                                         # tests/bundle_factory.py small_bundle_spec()
    clips = 6

    def frames():
        for i in range(per_clip * clips):
            if i == 2 * per_clip + 1:                     # clips 0 and 1 are complete
                wait_for(lambda: sub.clips(), "the first event")
                broker.stop()
            if i == 4 * per_clip + 1:
                broker.start()
                wait_for(lambda: out.connected, "the output to reconnect")
            yield i / FPS, moving_shapes(i, seed=5)

    jsonl = tmp_path / "events.jsonl"
    result = caption_sources(small_bundle, {"cam0": frames()}, [JsonlOutput(jsonl), out],
                             backend="onnxruntime", template="caption", stable_clips=1)
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert result.events == clips and [r["clip"] for r in rows] == list(range(clips))  # never stopped
    assert out.stats["connects"] == 2 and out.stats["disconnects"] >= 1 and out.stats["dropped"] == 0
    wait_for(lambda: sub.clips() == list(range(clips)), "every event at the subscriber")
    firsts = {}
    for payload in sub.on(f"{TOPIC}/events"):
        row = json.loads(payload)
        row.pop("time")
        firsts.setdefault(row["clip"], row)
    assert [firsts[i] for i in range(clips)] == rows
    assert json.loads(latest_retained(broker.port, f"{TOPIC}/caption"))["caption"] == rows[-1]["caption"]
    assert result.outputs[1].failures == 0 and result.outputs[1].events == clips
