"""MQTT output: every caption event, the latest caption and the sources' state published to a broker
(``mqtt://[USER[:PASSWORD]@]HOST[:PORT]/TOPIC``), for home automation (Home Assistant, Node-RED).

Topics under ``TOPIC`` (``vbedge`` when the URI has no path), JSON payloads (docs/outputs-subtitles-mqtt.md):

``TOPIC/status``
    ``online`` (retained) once connected; ``offline`` (retained) when the output closes, and as the
    broker-sent Last Will when the connection is lost without a goodbye.
``TOPIC/events``
    every :class:`~vbedge.pipeline.ClipEvent` (:meth:`~vbedge.pipeline.ClipEvent.to_dict` plus
    ``time``, the wall-clock Unix time it was published), in order, not retained.
``TOPIC/caption``
    the caption now shown (retained, published when it changes): ``source``, ``caption``, ``clip``,
    ``start``, ``end``, ``confidence``, ``time``.
``TOPIC/source``
    the source's state (retained): ``state`` is ``streaming`` from its first clip until it reports a
    :class:`~vbedge.sources.SourceEvent`, then that event's kind (``disconnected``,
    ``connect_failed``, ``reconnected``: streaming again, ``ended``), with ``message``,
    ``attempt``, ``retry_in``, ``time``.

When the output serves several sources, the caption and source topics get the source id as one
more level (``TOPIC/caption/SOURCE``, ``TOPIC/source/SOURCE``; ``/ + #`` in ids become ``_``);
``TOPIC/events`` carries every source (the ``source`` field says which).

Never blocking captioning: paho-mqtt's network thread connects (``connect_async``: a broker that is
down at start does not stop captioning), reconnects with a backoff (``reconnect_min`` ..
``reconnect_max`` seconds) and sends; :meth:`MqttOutput.write` only queues. Messages are QoS 1; while
the broker is away they wait in a bounded FIFO (``queue`` messages, 1000 by default: 12 to 25 minutes
of one source's 1.5 s clips, one event a clip plus a caption message when it changes) and go out in
order once it is back, after paho has re-sent what was in flight when the connection went; when the FIFO is full,
new messages are dropped and counted (:attr:`MqttOutput.stats` ``dropped``, one warning per episode).
QoS 1 is at-least-once: after a reconnect a subscriber may see an event twice (``source`` + ``clip``
identify it). After every reconnect the latest caption and source states are published again
(retained), since a broker restarted without persistence forgets retained messages and dropped
messages may have been captions.

``mqtts://`` connects with TLS (port 8883 by default) checked against the system's CA certificates,
or ``?ca=PATH`` (a PEM file). Other query options: ``client_id=ID``, ``queue=N``.
Needs ``pip install 'vbedge[mqtt]'`` (paho-mqtt 2).
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
from urllib.parse import parse_qs, unquote, urlsplit

from ..errors import InvalidInputError, MissingDependencyError
from .base import Output, register_output

log = logging.getLogger("vbedge.outputs")

__all__ = ["MqttOutput", "parse_mqtt_uri"]

MQTT_HINT = "pip install 'vbedge[mqtt]' (or pip install 'paho-mqtt>=2')"
_QUERY_KEYS = ("ca", "client_id", "queue")


def parse_mqtt_uri(target) -> dict:
    """``mqtt://[USER[:PASSWORD]@]HOST[:PORT]/TOPIC[?client_id=..&queue=..&ca=..]`` (or ``mqtts://``)
    as a dict: ``tls``, ``host``, ``port``, ``topic``, ``username``, ``password``, ``client_id``,
    ``queue``, ``ca``. Raises :class:`~vbedge.errors.InvalidInputError` naming what is wrong."""
    text = str(target)
    parts = urlsplit(text)
    if parts.scheme not in ("mqtt", "mqtts"):
        raise InvalidInputError(f"{text!r}: an MQTT output is mqtt://HOST[:PORT]/TOPIC or mqtts://...")
    try:
        port = parts.port
    except ValueError as exc:
        raise InvalidInputError(f"{text!r}: the port must be a number from 1 to 65535") from exc
    if not parts.hostname:
        raise InvalidInputError(f"{text!r}: no broker host (expected mqtt://HOST[:PORT]/TOPIC)")
    topic = unquote(parts.path).strip("/") or "vbedge"
    if any(ch in topic for ch in "+#\0") or "//" in topic or "#" in text:  # (urlsplit takes # as a fragment)
        raise InvalidInputError(f"{text!r}: topic {topic!r} must not contain the wildcards + or #, "
                                "NUL or empty levels")
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(query) - set(_QUERY_KEYS))
    if unknown:
        raise InvalidInputError(f"{text!r}: unknown option(s) {unknown}; known: {list(_QUERY_KEYS)}")
    queue = query.get("queue", ["1000"])[-1]
    if not queue.isdigit() or int(queue) < 1:
        raise InvalidInputError(f"{text!r}: queue must be a whole number >= 1, got {queue!r}")
    tls = parts.scheme == "mqtts"
    if "ca" in query and not tls:
        raise InvalidInputError(f"{text!r}: ca= is for mqtts:// (TLS) only")
    return {"tls": tls, "host": parts.hostname, "port": port or (8883 if tls else 1883), "topic": topic,
            "username": None if parts.username is None else unquote(parts.username),
            "password": None if parts.password is None else unquote(parts.password),
            "client_id": query.get("client_id", [""])[-1], "queue": int(queue),
            "ca": query.get("ca", [None])[-1]}


def _topic_level(source_id):
    return "".join("_" if ch in "/+#\0" else ch for ch in str(source_id)) or "_"


class MqttOutput(Output):
    """Publishes caption events to an MQTT broker (see the module docstring for topics, payloads and
    what happens while the broker is away).

    Args:
        target: ``mqtt://[USER[:PASSWORD]@]HOST[:PORT]/TOPIC`` or ``mqtts://...``.
        reconnect_min, reconnect_max: reconnect backoff in seconds (doubles per failed attempt).
        keepalive: seconds between keep-alive pings; a silent broker is noticed after 1.5x that.
        close_timeout: longest wait at :meth:`close` for queued messages to reach the broker.

    Attributes:
        stats: ``published`` (messages handed to the network thread), ``dropped`` (queue full),
            ``connects``, ``disconnects``.
        connected: whether the broker has accepted the connection now.
    """

    kind = "mqtt"

    def __init__(self, target, reconnect_min: float = 1.0, reconnect_max: float = 30.0,
                 keepalive: int = 30, close_timeout: float = 2.0):
        super().__init__(target)
        self.uri = parse_mqtt_uri(target)
        if not 0 < reconnect_min <= reconnect_max:
            raise InvalidInputError(f"need 0 < reconnect_min <= reconnect_max, got {reconnect_min}, {reconnect_max}")
        self.reconnect = (reconnect_min, reconnect_max)
        self.keepalive = int(keepalive)
        self.close_timeout = float(close_timeout)
        self.topic = self.uri["topic"]
        self.stats = {"published": 0, "dropped": 0, "connects": 0, "disconnects": 0}
        self.connected = False
        self._client = None
        # _lock: our state, for the consumer and the sources' reader threads (held while handing
        # messages to paho). _counts: stats and flags also touched by paho's thread, whose callbacks
        # may run under paho's own locks, so it is never held while calling paho (no lock cycle).
        self._lock = threading.Lock()
        self._counts = threading.Lock()
        self._several = False
        self._captions: dict = {}    # source id -> (caption, payload) last published
        self._states: dict = {}      # source id -> state payload last published
        self._needs_state = set()    # sources whose next clip publishes state "streaming"
        self._republish = False      # a reconnect happened: publish retained state again
        self._backlog = collections.deque()  # (kind, source id, payload, retain) waiting for the broker
        self._ready = False          # connected, and paho's re-sending after a reconnect is done
        self._online_mid = None      # the "online" message whose ack says so
        self._mqtt = None
        self._dropping = False
        self._unreachable_logged = False

    @property
    def description(self) -> str:
        # The URI without its password, for logs and OutputSet.status().
        uri = self.uri
        user = f"{uri['username']}@" if uri["username"] else ""
        scheme = "mqtts" if uri["tls"] else "mqtt"
        return f"mqtt {scheme}://{user}{uri['host']}:{uri['port']}/{uri['topic']}"

    # -- topics --------------------------------------------------------------------------------

    def topic_for(self, kind, source_id=None) -> str:
        """The topic of ``kind`` (``status``, ``events``, ``caption``, ``source``) for ``source_id``."""
        if kind in ("caption", "source") and self._several:
            return f"{self.topic}/{kind}/{_topic_level(source_id)}"
        return f"{self.topic}/{kind}"

    # -- the contract --------------------------------------------------------------------------

    def open(self, context, resume=False):
        try:
            import paho.mqtt.client as mqtt
        except ImportError as exc:
            raise MissingDependencyError(f"the MQTT output ({self.target}) needs paho-mqtt: {MQTT_HINT}") from exc
        if not hasattr(mqtt, "CallbackAPIVersion"):
            raise MissingDependencyError(f"the MQTT output needs paho-mqtt 2 or newer: {MQTT_HINT}")
        self._several = len(context.sources) > 1
        self._needs_state = set(context.sources) - set(self._states)
        self._mqtt = mqtt
        self._ready = False
        uri = self.uri
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=uri["client_id"],
                             protocol=mqtt.MQTTv311)
        if uri["username"] is not None:
            client.username_pw_set(uri["username"], uri["password"])
        if uri["tls"]:
            try:
                client.tls_set(ca_certs=uri["ca"])
            except OSError as exc:  # ssl.SSLError is one too: a missing or unreadable PEM file
                raise InvalidInputError(f"{self.description}: cannot use the CA certificates "
                                        f"{uri['ca'] or '(the system default)'}: {exc}") from exc
        client.will_set(self.topic_for("status"), "offline", qos=1, retain=True)
        client.max_queued_messages_set(uri["queue"])
        client.reconnect_delay_set(*self.reconnect)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_connect_fail = self._on_connect_fail
        client.on_publish = self._on_publish
        try:
            client.connect_async(uri["host"], uri["port"], keepalive=self.keepalive)
        except ValueError as exc:
            raise InvalidInputError(f"{self.description}: {exc}") from exc
        self._client = client
        client.loop_start()  # connects (and reconnects) in paho's thread; never blocks us
        # (Source events from before open, when the sources opened, wait in the backlog already.)

    def write(self, event):
        payload = event.to_dict()
        payload["time"] = round(time.time(), 3)
        with self._lock:
            if event.source_id in self._needs_state:
                self._needs_state.discard(event.source_id)
                self._set_state(event.source_id, {"state": "streaming", "message": "clips arrive",
                                                  "attempt": 0, "retry_in": None})
            self._queue("events", event.source_id, payload)
            last = self._captions.get(event.source_id)
            if last is None or last[0] != event.caption:
                caption = {"source": event.source_id, "caption": event.caption, "clip": event.clip_index,
                           "start": payload["start"], "end": payload["end"],
                           "confidence": payload["confidence"], "time": payload["time"]}
                self._captions[event.source_id] = (event.caption, caption)
                self._queue("caption", event.source_id, caption, retain=True)
            self._flush()

    def source_event(self, source_id, event):
        # Called from the source's reader thread; our state is locked, paho's publish is thread-safe.
        # From now on the state is the last source event ("reconnected" says it streams again): the
        # clips still on their way were read before it, so they must not say "streaming".
        with self._lock:
            self._needs_state.discard(source_id)
            self._set_state(source_id, {"state": event.kind, "message": event.message,
                                        "attempt": event.attempt, "retry_in": event.retry_in})
            self._flush()

    @property
    def waiting(self) -> int:
        """Messages held while the broker is away (at most ``queue``)."""
        return len(self._backlog)

    def close(self):
        client = self._client
        if client is None:
            return
        deadline = time.monotonic() + self.close_timeout
        try:
            if self.connected:
                while not self._ready and self.connected and time.monotonic() < deadline:
                    time.sleep(0.01)  # paho is still re-sending what was in flight at a reconnect
                with self._lock:
                    self._flush()
                    self._client = None  # (so _on_disconnect knows the goodbye is ours)
                info = client.publish(self.topic_for("status"), "offline", qos=1, retain=True)
                try:  # QoS 1 messages go out in order: this ack means everything before it arrived
                    info.wait_for_publish(timeout=max(0.1, deadline - time.monotonic()))
                except (RuntimeError, ValueError):
                    pass
            self._client = None
            client.disconnect()
        finally:
            self._client = None
            client.loop_stop()
            self.connected = False

    # -- publishing ----------------------------------------------------------------------------
    #
    # Messages wait in our own bounded FIFO (_backlog) and are handed to paho only while it is
    # connected *and* has finished re-sending what was in flight when the connection was lost:
    # paho re-sends those after calling on_connect, so a message handed over in between would
    # overtake them. The "online" status published in on_connect is the marker: when the broker
    # acknowledges it, paho's re-sending is done (_ready).

    def _set_state(self, source_id, fields):
        state = {"source": source_id, **fields, "time": round(time.time(), 3)}
        self._states[source_id] = state
        self._queue("source", source_id, state, retain=True)

    def _queue(self, kind, source_id, payload, retain=False):
        # The topic is chosen when sent: before open, it is not known yet how many sources there are.
        if len(self._backlog) >= self.uri["queue"]:
            with self._counts:
                self.stats["dropped"] += 1
                first = not self._dropping
                self._dropping = True
            if first:
                log.warning("%s: the broker is away and %d message(s) wait; dropping new ones until it "
                            "is back (counted; the latest caption and source state are sent again then)",
                            self.description, self.uri["queue"])
            return
        self._backlog.append((kind, source_id, json.dumps(payload), retain))

    def _flush(self):
        """Hand the waiting messages to paho, oldest first, when it is ready (caller holds _lock)."""
        client = self._client
        if client is None:
            return
        with self._counts:
            ready = self._ready
            republish = ready and self._republish
            if republish:
                self._republish = False
        if not ready:
            return
        if republish:
            # A broker restarted without persistence forgot our retained messages; messages dropped
            # while it was away may have been captions: send the latest again, after the rest.
            for state in self._states.values():
                self._backlog.append(("source", state["source"], json.dumps(state), True))
            for _caption, caption in self._captions.values():
                self._backlog.append(("caption", caption["source"], json.dumps(caption), True))
        while self._backlog:
            kind, source_id, data, retain = self._backlog[0]
            info = client.publish(self.topic_for(kind, source_id), data, qos=1, retain=retain)
            if info.rc == self._mqtt.MQTT_ERR_QUEUE_SIZE:
                break  # paho's own queue is full (the connection went meanwhile): keep them here
            self._backlog.popleft()
            with self._counts:
                self.stats["published"] += 1

    # -- paho's thread ---------------------------------------------------------------------------

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            if not self._unreachable_logged:  # once per episode; paho keeps retrying
                self._unreachable_logged = True
                log.warning("%s: the broker refused the connection (%s); captioning goes on, retrying",
                            self.description, reason_code)
            return
        self.connected = True
        self._unreachable_logged = False
        with self._counts:
            self.stats["connects"] += 1
            self._ready = False
            self._dropping = False
            again = self.stats["connects"] > 1
            if again:
                self._republish = True
        if again:
            log.warning("%s: connected again", self.description)
        info = client.publish(self.topic_for("status"), "online", qos=1, retain=True)
        with self._counts:
            if info.rc == 0:
                self._online_mid = info.mid  # its ack comes after paho's re-sending (same thread)
            else:
                self._ready = True

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        was = self.connected
        self.connected = False
        with self._counts:
            self._ready = False
            if was:
                self.stats["disconnects"] += 1
        if was and self._client is not None:  # not our own close()
            log.warning("%s: lost the broker (%s); captioning goes on, reconnecting", self.description,
                        reason_code)

    def _on_publish(self, client, userdata, mid, reason_code, properties):
        with self._counts:
            if mid != self._online_mid or self._ready:
                return
            self._ready = True
        # Send what waited now rather than with the next clip. Only if the lock is free: the
        # consumer may hold it while waiting for a paho lock this thread holds (it then flushes).
        if self._lock.acquire(blocking=False):
            try:
                self._flush()
            finally:
                self._lock.release()

    def _on_connect_fail(self, client, userdata):
        if not self._unreachable_logged:  # once per episode; paho keeps retrying with its backoff
            self._unreachable_logged = True
            log.warning("%s: cannot reach the broker; captioning goes on, retrying", self.description)


register_output("mqtt", lambda target: target.lower().startswith(("mqtt://", "mqtts://")), MqttOutput,
                "mqtt://HOST[:PORT]/TOPIC (events, latest caption and source state to an MQTT broker)")
