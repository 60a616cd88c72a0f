"""vbedge.outputs.mqtt against a real broker (Debian's mosquitto, started by each test on a free port):
events arrive as JSON in order, the retained caption and status reach a late subscriber, and the
broker is down at start, stopped and restarted mid-run without captioning noticing."""

import json
import logging
import os
import shutil
import signal
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

try:
    import paho.mqtt.client as mqtt
except ImportError:  # the tests of URIs and of the missing-paho error still run
    mqtt = None

MOSQUITTO = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")
needs_paho = pytest.mark.skipif(mqtt is None, reason="paho-mqtt is not installed (pip install 'vbedge[mqtt]')")
_needs_mosquitto = pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto is not installed (.ci/system-deps.sh "
                                                                "installs Debian's mosquitto package)")


def needs_broker(test):
    return needs_paho(_needs_mosquitto(test))

TOPIC = "vbedge/test"


def event(i, caption, source="cam0"):
    return ClipEvent(source_id=source, clip_index=i, start=1.5 * i, end=1.5 * (i + 1), leaf=i,
                     token_id=100 + i, token=f"[V:{i}]", caption=caption, clip_caption=f"clip {i}",
                     caption_changed=True, confidence=0.5)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, what, timeout=20.0, show=None):
    """Poll ``predicate`` (a bounded wait, not a timing assertion); ``show()`` says what was seen."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"gave up waiting for {what}" + (f"; got {show()}" if show else ""))


class Broker:
    """A mosquitto on 127.0.0.1:port that a test can stop and start again on the same port."""

    def __init__(self, folder, persistent=False, settings=("allow_anonymous true",)):
        self.port = free_port()
        self.folder = folder
        self.log = folder / "mosquitto.log"
        lines = [f"listener {self.port} 127.0.0.1", *settings, "user root"]
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

    def __init__(self, port, topic=f"{TOPIC}/#", client_id="", persistent=False, username=None, password=None,
                 ca=None):
        self.messages = []
        self.subscribed = threading.Event()
        self._lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                  clean_session=not persistent, protocol=mqtt.MQTTv311)
        self.client.reconnect_delay_set(0.1, 0.5)
        if username is not None:
            self.client.username_pw_set(username, password)
        if ca is not None:
            self.client.tls_set(ca_certs=str(ca))
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


def latest_retained(port, topic, timeout=10.0, **login):
    """What a new subscriber of ``topic`` gets at once: the retained message (or None)."""
    sub = Subscriber(port, topic, **login)
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


@needs_paho
def test_a_missing_ca_file_is_an_error_at_open(tmp_path):
    with pytest.raises(InvalidInputError, match="cannot use the CA certificates .*missing.pem"):
        MqttOutput(f"mqtts://127.0.0.1/t?ca={tmp_path / 'missing.pem'}").open(
            OutputContext(fps=20, sources=("cam0",)))


@needs_paho
def test_no_broker_the_queue_is_bounded_and_drops_are_counted_once(caplog, cleanup):
    out = MqttOutput(f"mqtt://127.0.0.1:{free_port()}/{TOPIC}?queue=5")
    cleanup.append(out)
    out.open(OutputContext(fps=20, sources=("cam0",)))   # nobody listens there: open returns anyway
    with caplog.at_level(logging.WARNING, logger="vbedge.outputs"):
        for i in range(20):
            out.write(event(i, "stir"))
    # event 0: source state + event + caption; events 1, 2: one each; 3..19 dropped
    assert out.waiting == 5 and out.stats["dropped"] == 17 and out.stats["published"] == 0
    assert not out.connected
    assert sum("dropping new ones" in r.getMessage() for r in caplog.records) == 1


@needs_paho
def test_a_broker_that_accepts_but_never_answers_does_not_block_write(cleanup):
    """A TCP server that accepts the connection and then says nothing (a hung broker): paho waits
    for its CONNACK in its own thread; write() keeps returning and queues."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    cleanup.append(server)
    out = MqttOutput(f"mqtt://127.0.0.1:{server.getsockname()[1]}/{TOPIC}")
    cleanup.insert(0, out)
    out.open(OutputContext(fps=20, sources=("cam0",)))
    writer = threading.Thread(target=lambda: [out.write(event(i, "stir")) for i in range(50)], daemon=True)
    writer.start()
    writer.join(timeout=30)                               # generous: it only fails if write blocks
    assert not writer.is_alive(), "write() blocked on a broker that does not answer"
    assert out.waiting == 52 and not out.connected  # 50 events + the first state and caption


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
    out.source_event("cam0", SourceEvent("reconnected", "camera back"))
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
    assert [s for j, s in enumerate(states) if j == 0 or s != states[j - 1]] == \
           ["streaming", "disconnected", "reconnected"]   # the clips after an event do not say streaming


@needs_broker
def test_a_broker_restarted_without_memory_gets_the_latest_caption_again(tmp_path, cleanup):
    broker = Broker(tmp_path, persistent=False).start()
    cleanup.append(broker)
    out = MqttOutput(f"mqtt://127.0.0.1:{broker.port}/{TOPIC}", reconnect_min=0.1, reconnect_max=0.5)
    cleanup.insert(0, out)
    out.source_event("right", SourceEvent("ended", "end of file"))  # before open: a file read ahead
    out.open(OutputContext(fps=20, sources=("left", "right")))
    wait_for(lambda: out.connected, "the output to connect")
    out.write(event(0, "cut", "left"))
    out.write(event(0, "stir", "right"))                  # its clips come after its end: still "ended"
    assert json.loads(latest_retained(broker.port, f"{TOPIC}/caption/right"))["caption"] == "stir"
    assert json.loads(latest_retained(broker.port, f"{TOPIC}/source/right"))["state"] == "ended"
    broker.stop()
    broker.start()                                        # retained messages are gone
    wait_for(lambda: out.stats["connects"] == 2, "the output to reconnect")
    for i in range(1, 20):                                # the same captions: only a republish sends them
        out.write(event(i, "cut", "left"))
        if latest_retained(broker.port, f"{TOPIC}/caption/left", timeout=1.0) is not None:
            break
    left = json.loads(latest_retained(broker.port, f"{TOPIC}/caption/left"))
    assert (left["caption"], left["clip"], left["source"]) == ("cut", 0, "left")
    assert json.loads(latest_retained(broker.port, f"{TOPIC}/source/right"))["state"] == "ended"
    assert json.loads(latest_retained(broker.port, f"{TOPIC}/source/left"))["state"] == "streaming"
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


@needs_broker
def test_username_and_password_from_the_uri(tmp_path, cleanup, caplog):
    passwd_tool = shutil.which("mosquitto_passwd")
    if passwd_tool is None:
        pytest.skip("mosquitto_passwd is not installed")
    subprocess.run([passwd_tool, "-b", "-c", str(tmp_path / "passwd"), "kitchen", "p@ss word"], check=True,
                   capture_output=True, timeout=30)
    broker = Broker(tmp_path, settings=("allow_anonymous false", f"password_file {tmp_path / 'passwd'}")).start()
    cleanup.append(broker)
    good = MqttOutput(f"mqtt://kitchen:p%40ss%20word@127.0.0.1:{broker.port}/{TOPIC}")
    bad = MqttOutput(f"mqtt://kitchen:wrong@127.0.0.1:{broker.port}/{TOPIC}/bad", reconnect_min=0.1,
                     reconnect_max=0.2)
    cleanup[:0] = [good, bad]
    with caplog.at_level(logging.WARNING, logger="vbedge.outputs"):
        for out in (good, bad):
            out.open(OutputContext(fps=20, sources=("cam0",)))
        wait_for(lambda: good.connected, "the output with the right password to connect")
        good.write(event(0, "cut"))
        bad.write(event(0, "cut"))                        # refused: queued, never raises
        wait_for(lambda: broker.log.read_text().count("not authorised") >= 3, "paho to try (and be refused) 3 times")
    assert json.loads(latest_retained(broker.port, f"{TOPIC}/caption", username="kitchen",
                                      password="p@ss word"))["caption"] == "cut"
    assert not bad.connected and bad.stats["connects"] == 0
    assert sum("refused" in r.getMessage() for r in caplog.records) == 1


def make_tls_files(folder):
    """A CA and a server certificate for 127.0.0.1 signed by it (PEM files), made with cryptography."""
    x509 = pytest.importorskip("cryptography.x509")
    import datetime
    import ipaddress

    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def cert(subject, key, issuer, issuer_key, ca):
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if not ca:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vbedge test CA")])
    ca_cert = cert(ca_name, ca_key, ca_name, ca_key, ca=True)
    server_cert = cert(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]), server_key, ca_name,
                       ca_key, ca=False)
    paths = {name: folder / f"{name}.pem" for name in ("ca", "server", "server_key")}
    paths["ca"].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths["server"].write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    paths["server_key"].write_bytes(server_key.private_bytes(serialization.Encoding.PEM,
                                                             serialization.PrivateFormat.TraditionalOpenSSL,
                                                             serialization.NoEncryption()))
    return paths


@needs_broker
def test_mqtts_with_a_private_ca(tmp_path, cleanup, caplog):
    tls = make_tls_files(tmp_path)
    broker = Broker(tmp_path, settings=("allow_anonymous true", f"cafile {tls['ca']}", f"certfile {tls['server']}",
                                        f"keyfile {tls['server_key']}")).start()
    cleanup.append(broker)
    out = MqttOutput(f"mqtts://127.0.0.1:{broker.port}/{TOPIC}?ca={tls['ca']}")
    untrusted = MqttOutput(f"mqtts://127.0.0.1:{broker.port}/{TOPIC}/untrusted", reconnect_min=0.1,
                           reconnect_max=0.2)                 # the system CAs do not know ours
    cleanup[:0] = [out, untrusted]
    with caplog.at_level(logging.WARNING, logger="vbedge.outputs"):
        out.open(OutputContext(fps=20, sources=("cam0",)))
        untrusted.open(OutputContext(fps=20, sources=("cam0",)))
        wait_for(lambda: out.connected, "the TLS connection")
        out.write(event(0, "whisk"))
        untrusted.write(event(0, "whisk"))
        wait_for(lambda: any("cannot reach" in r.getMessage() and "untrusted" in r.getMessage()
                             for r in caplog.records), "the untrusted certificate to be refused")
    got = latest_retained(broker.port, f"{TOPIC}/caption", ca=tls["ca"])
    assert json.loads(got)["caption"] == "whisk"
    assert not untrusted.connected and untrusted.stats["connects"] == 0


@needs_broker
def test_the_last_will_says_offline_when_the_process_dies(tmp_path, cleanup):
    broker = Broker(tmp_path).start()
    cleanup.append(broker)
    sub = Subscriber(broker.port)
    cleanup.append(sub)
    wait_for(sub.subscribed.is_set, "the subscription")
    script = ("import sys, time\n"
              "from vbedge.outputs import OutputContext\n"
              "from vbedge.outputs.mqtt import MqttOutput\n"
              "out = MqttOutput(sys.argv[1])\n"
              "out.open(OutputContext(fps=20, sources=('cam0',)))\n"
              "while not out.connected: time.sleep(0.02)\n"
              "print('ready', flush=True)\n"
              "time.sleep(120)\n")
    child = subprocess.Popen([sys.executable, "-c", script, f"mqtt://127.0.0.1:{broker.port}/{TOPIC}"],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        wait_for(lambda: sub.on(f"{TOPIC}/status") == ["online"], "status online")
    finally:
        child.kill()                                      # no goodbye: the broker sends the will
        child.wait(timeout=30)
    wait_for(lambda: sub.on(f"{TOPIC}/status") == ["online", "offline"], "the Last Will")


class WritesWhenConnected(MqttOutput):
    """Writes one event from inside on_connect: the moment before paho re-sends what was in flight
    when the connection was lost, where a message handed straight to paho would overtake them."""

    def __init__(self, target, event_on_reconnect, **options):
        super().__init__(target, **options)
        self.event_on_reconnect = event_on_reconnect

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        super()._on_connect(client, userdata, flags, reason_code, properties)
        if self.stats["connects"] == 2:
            self.write(self.event_on_reconnect)


@needs_broker
def test_messages_in_flight_at_a_disconnect_are_not_overtaken(tmp_path, cleanup):
    broker = Broker(tmp_path, persistent=True).start()
    cleanup.append(broker)
    sub = Subscriber(broker.port, client_id="vbedge-order-sub", persistent=True)
    cleanup.append(sub)
    wait_for(sub.subscribed.is_set, "the subscription")
    out = WritesWhenConnected(f"mqtt://127.0.0.1:{broker.port}/{TOPIC}", event(6, "stir"), reconnect_min=0.1,
                              reconnect_max=0.5)
    cleanup.insert(0, out)
    out.open(OutputContext(fps=20, sources=("cam0",)))
    wait_for(lambda: out.connected, "the output to connect")
    for i in range(3):
        out.write(event(i, "cut"))
    wait_for(lambda: sub.clips() == [0, 1, 2], "events 0..2")
    database = tmp_path / "mosquitto.db"
    assert not database.exists()
    broker.process.send_signal(signal.SIGUSR1)            # save the subscriber's session now
    # mosquitto writes mosquitto.db.new and renames it: once the name exists, the save is complete
    wait_for(database.exists, "the database to be saved")
    broker.process.send_signal(signal.SIGSTOP)            # a hung broker: events 3..5 stay unacknowledged
    for i in range(3, 6):
        out.write(event(i, "stir"))
    wait_for(lambda: out.stats["published"] >= 9, "events 3..5 to be handed to paho")
    broker.process.kill()                                 # the connection drops with them in flight
    broker.process.wait(timeout=20)
    broker.start()                                        # reconnect: paho re-sends 3..5; event 6 is
    wait_for(lambda: sub.clips() == list(range(7)), "0..6 in order",  # (6 is written inside on_connect)
             timeout=10, show=lambda: (sub.clips(), out.stats, broker.log.read_text()[-1500:]))

