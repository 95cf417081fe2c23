"""``Publisher``: ``oppsync.ingest_change`` messages, as kombu's Redis transport stores them.

The receiver queues a delivery with one Redis script (``Deliveries.admit``) that pushes the
message itself, in the same round trip as the delivery-id claim: a Celery publish
(``apply_async`` over a kombu producer) cost a third of the receiver's CPU per delivery and
a round trip of its own. So the message is built here, once per delivery, to be what
``ingest_change.apply_async(kwargs={"envelope": …}, queue="ingest")`` pushes (Celery 5's
``app/amqp.py`` ``as_task_v2``; kombu 5's ``transport/virtual/base.py`` and
``transport/redis.py`` ``Channel._put``):

* task protocol 2: the task's headers, and a JSON body ``[args, kwargs, embed]`` that the
  virtual transport base64-encodes (``body_encoding``), in a JSON object with
  ``content-type``, ``content-encoding``, ``headers`` and ``properties``;
* where: Celery sends a queue named by its name through the default (anonymous) exchange
  with the queue as routing key, so kombu ``LPUSH``es onto the list named after the queue,
  with no priority-step suffix at priority 0, and reads no ``_kombu.binding.*`` set (only a
  named exchange is looked up there). A message the worker restores after the visibility
  timeout goes back the same way.

The Procfile's worker runs it as any other task and Flower shows it (from the worker's
events: no "sent" event is published, as ``task_send_sent_event`` is off anyway).
``tests/unit/test_publisher.py`` holds the message against what ``apply_async`` pushes.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import uuid

from schemas.envelope import Envelope
from worker.jobview import event_shown, shown

#: The task and its queue (worker/tasks.py, worker/queues.py); named here so the web
#: process does not build the Celery app to publish.
TASK = "oppsync.ingest_change"
QUEUE = "ingest"
#: Celery's body ``embed`` part for a task with no callbacks, chain or chord.
EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
#: Marks a slot of the message template (no JSON text contains it).
SLOT = "\x00%s\x00"


class Publisher:
    """Builds ``oppsync.ingest_change`` messages for one web process."""

    def __init__(self) -> None:
        # Celery's ``origin`` (the publishing node, ``anon_nodename()``) and ``reply_to``
        # (the app's ``thread_oid``; no result is kept) stay the same for a process, so the
        # message is a template with a slot for each part that changes: serializing the
        # headers, and scanning the 3 KB body for characters to escape, cost more than
        # the rest of the message per delivery.
        task_id, tag = SLOT % "id", SLOT % "tag"
        shape = {
            "body": SLOT % "body",
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {
                "lang": "py",
                "task": TASK,
                "id": task_id,
                "shadow": None,
                "eta": None,
                "expires": None,
                "group": None,
                "group_index": None,
                "retries": 0,
                "timelimit": [None, None],
                "root_id": task_id,
                "parent_id": None,
                "argsrepr": "()",
                "kwargsrepr": SLOT % "kwargsrepr",
                "origin": f"gen{os.getpid()}@{socket.gethostname()}",
                "ignore_result": True,
                "replaced_task_nesting": 0,
                "stamped_headers": None,
                "stamps": {},
            },
            "properties": {
                "correlation_id": task_id,
                "reply_to": str(uuid.uuid4()),
                "delivery_mode": 2,
                "delivery_info": {"exchange": "", "routing_key": QUEUE},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": tag,
            },
        }
        self._template = json.dumps(shape).replace("%", "%%")
        for name in ("id", "tag", "body", "kwargsrepr"):
            self._template = self._template.replace(json.dumps(SLOT % name), f"%({name})s")

    def message(self, envelope: Envelope) -> str:
        """The message as the queue's list holds it (kombu's JSON)."""
        data = envelope.to_dict()
        body = json.dumps([[], {"envelope": data}, EMBED]).encode()
        # What Flower and task events show instead of the arguments: Celery's saferepr of a
        # 2 KB payload cost more than the rest of the message, and the payload is a vendor's
        # record (names, emails) that has no business in task metadata.
        kwargsrepr = shown(envelope=event_shown(data))["kwargsrepr"]
        return self._template % {
            "id": f'"{uuid.uuid4()}"',  # uuids, base64: nothing JSON escapes
            "tag": f'"{uuid.uuid4()}"',
            "body": f'"{base64.b64encode(body).decode()}"',
            "kwargsrepr": json.dumps(kwargsrepr),
        }
