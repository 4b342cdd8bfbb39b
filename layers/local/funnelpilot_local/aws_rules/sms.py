"""AWS End User Messaging SMS (``pinpoint-sms-voice-v2``) answered in process: moto has no such service.

The calls funnelpilot makes are answered as the service would, after strict IAM (this family comes
after ``iam``) and botocore's own parameter validation (the service model's input shape):

- ``SendTextMessage`` from the template's origination identity (``SmsOriginationIdentity``; another
  one is ``ResourceNotFoundException``): the message is written to ``.local/outbox-sms/<id>.json``
  (``id``: the funnelpilot message id of its ``Context``, else the service's ``MessageId``), and its
  delivery event goes to the configuration set's SNS event destination, as the service publishes it
  (``TEXT_DELIVERED``; ``TEXT_CARRIER_UNREACHABLE`` for a number in ``unreachable``). A destination on
  the opt-out list is refused: ``ConflictException``, reason ``DESTINATION_PHONE_NUMBER_OPTED_OUT``.
- ``PutOptedOutNumber``, ``DeleteOptedOutNumber``, ``DescribeOptedOutNumbers`` on that list (``Default``,
  the list a new phone number uses), and ``reply`` stands for an inbound text: an opt-out keyword
  (STOP, ...) puts the number on it, as the service's self-managed-opt-outs-off default does.

Any other operation raises: extend this fake rather than let a call reach nothing. Checked against
https://docs.aws.amazon.com/pinpoint/latest/apireference_smsvoicev2/API_SendTextMessage.html,
https://docs.aws.amazon.com/sms-voice/latest/userguide/configuration-sets-event-format.html and
https://docs.aws.amazon.com/botocore/latest/reference/services/pinpoint-sms-voice-v2/client/exceptions/ConflictException.html.
"""
import json
import threading
import uuid
from pathlib import Path

from botocore.validate import validate_parameters

from funnelpilot import clock
from funnelpilot_local.aws_rules import Call, Rule, error

SERVICE = "pinpoint-sms-voice-v2"
OPT_OUT_LIST = "Default"
OPT_OUT_KEYWORDS = {"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "OPTOUT", "OPT-OUT", "ARRET"}
LOCAL_NUMBER = "+15555550100"  # the local origination phone number


class Sms(Rule):
    def __init__(self, runtime):
        self.runtime = runtime
        self.outbox: Path = runtime.state_dir / "outbox-sms"
        self.origination = runtime.template.parameters.get("SmsOriginationIdentity") or ""
        self.opted_out: dict[str, set[str]] = {OPT_OUT_LIST: set()}
        self.unreachable: set[str] = set()  # destinations whose delivery fails (a test's)
        self.sent: list[dict] = []
        self._lock = threading.Lock()

    def before(self, call: Call) -> None:
        if call.service != SERVICE:
            return
        if call.client is not None:
            validate_parameters(call.params, call.client.meta.service_model.operation_model(call.operation).input_shape)
        handler = getattr(self, f"_{call.operation}", None)
        if handler is None:
            raise NotImplementedError(f"local runtime: {SERVICE} {call.operation} is not answered (aws_rules/sms.py)")
        call.extra["result"] = handler(call) | {"ResponseMetadata": {"HTTPStatusCode": 200}}

    @staticmethod
    def _refuse(call: Call, code: str, message: str, status: int, **extra) -> Exception:
        """The service's error as botocore raises it: the modeled class of the code (``ConflictException``)."""
        plain = error(call.operation, code, message, status, **extra)
        return call.client.exceptions.from_code(code)(plain.response, call.operation) if call.client else plain

    def _list(self, call: Call) -> set[str]:
        name = call.params["OptOutListName"].rsplit("/", 1)[-1]
        if name not in self.opted_out:
            raise self._refuse(call, "ResourceNotFoundException", f"opt-out list {name} does not exist",
                               404, ResourceType="opt-out-list", ResourceId=name)
        return self.opted_out[name]

    def _SendTextMessage(self, call: Call) -> dict:
        p = call.params
        if not self.origination or p.get("OriginationIdentity") != self.origination:
            raise self._refuse(call, "ResourceNotFoundException", "origination identity not found", 404,
                               ResourceType="phone-number", ResourceId=str(p.get("OriginationIdentity")))
        to = p["DestinationPhoneNumber"]
        with self._lock:
            if to in self.opted_out[OPT_OUT_LIST]:
                raise self._refuse(call, "ConflictException", "The destination phone number is opted out", 400,
                                   Reason="DESTINATION_PHONE_NUMBER_OPTED_OUT", ResourceType="opt-out-list",
                                   ResourceId=OPT_OUT_LIST)
        from funnelpilot.channels.sms import measure

        message_id = str(uuid.uuid4())
        context = p.get("Context") or {}
        record = {"MessageId": message_id, "OriginationIdentity": p["OriginationIdentity"],
                  "OriginationPhoneNumber": LOCAL_NUMBER, "DestinationPhoneNumber": to, "MessageBody": p["MessageBody"],
                  "MessageType": p.get("MessageType"), "ConfigurationSetName": p.get("ConfigurationSetName"),
                  "Context": context, **measure(p["MessageBody"]), "sent_at": clock.iso()}
        self.outbox.mkdir(parents=True, exist_ok=True)
        (self.outbox / f"{context.get('message_id') or message_id}.json").write_text(json.dumps(record, indent=2))
        with self._lock:
            self.sent.append(record)
        self._publish_event(record)
        return {"MessageId": message_id}

    def _publish_event(self, record: dict) -> None:
        """The delivery event of the configuration set's SNS destination (the template's)."""
        name = record["ConfigurationSetName"]
        if not name:
            return
        t = self.runtime.template
        for lid in t.of_type("AWS::SMSVOICE::ConfigurationSet"):
            props = t.resolve(t.properties(lid))
            if props["ConfigurationSetName"] != name.rsplit("/", 1)[-1]:
                continue
            failed = record["DestinationPhoneNumber"] in self.unreachable
            kind = "TEXT_CARRIER_UNREACHABLE" if failed else "TEXT_DELIVERED"
            event = {"eventType": kind, "eventVersion": "1.0", "eventTimestamp": int(clock.now() * 1000),
                     "isFinal": True, "originationPhoneNumber": LOCAL_NUMBER,
                     "destinationPhoneNumber": record["DestinationPhoneNumber"], "messageId": record["MessageId"],
                     "messageType": record["MessageType"], "messageStatus": kind.removeprefix("TEXT_"),
                     "context": record["Context"], "totalMessageParts": record["segments"]}
            for destination in props.get("EventDestinations", []):
                if destination.get("Enabled", True) and kind in destination["MatchingEventTypes"] \
                        and "SnsDestination" in destination:
                    self.runtime.publish_sns(destination["SnsDestination"]["TopicArn"], json.dumps(event))

    def _PutOptedOutNumber(self, call: Call) -> dict:
        with self._lock:
            self._list(call).add(call.params["OptedOutNumber"])
        return {"OptOutListName": call.params["OptOutListName"], "OptedOutNumber": call.params["OptedOutNumber"],
                "EndUserOptedOut": False}

    def _DeleteOptedOutNumber(self, call: Call) -> dict:
        with self._lock:
            self._list(call).discard(call.params["OptedOutNumber"])
        return {"OptOutListName": call.params["OptOutListName"], "OptedOutNumber": call.params["OptedOutNumber"]}

    def _DescribeOptedOutNumbers(self, call: Call) -> dict:
        with self._lock:
            numbers = sorted(self._list(call))
        wanted = call.params.get("OptedOutNumbers")
        return {"OptOutListName": call.params["OptOutListName"],
                "OptedOutNumbers": [{"OptedOutNumber": n, "EndUserOptedOut": True} for n in numbers
                                    if not wanted or n in wanted]}

    def reply(self, number: str, text: str) -> None:
        """An inbound text from ``number``: an opt-out keyword puts it on the opt-out list."""
        if text.strip().upper() in OPT_OUT_KEYWORDS:
            with self._lock:
                self.opted_out[OPT_OUT_LIST].add(number)
