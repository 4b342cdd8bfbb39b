"""Strict mode while the stack is built: what a real account refuses when template.yaml is
deployed, checked by the runtime as it creates the resources (no boto3 call is involved, so
these are not gate rules).

- ``AWS::SES::EmailIdentity``: creating an identity (address or domain) that already exists
  in the account and region fails with ``AlreadyExists`` (``Rules.ses_existing_identities``
  says which exist).
- CloudWatch alarm actions: an alarm publishes to an SNS topic as ``cloudwatch.amazonaws.com``;
  on a topic with SSE it needs ``kms:GenerateDataKey*`` and ``kms:Decrypt`` on the topic's
  key. The AWS managed key ``alias/aws/sns`` has a fixed key policy that allows only SNS
  itself, so every notification is dropped (AWS creates the stack anyway: here the runtime
  refuses to start). A customer managed key from the template is checked against its
  ``KeyPolicy``; a key the template does not define cannot be checked and is refused too.
"""
from fnmatch import fnmatchcase

from funnelpilot_local.template import Template

MANAGED_SNS_KEY = "alias/aws/sns"
CLOUDWATCH = "cloudwatch.amazonaws.com"
KEY_ACTIONS = ("kms:GenerateDataKey", "kms:Decrypt")  # what SNS calls for the publisher


class StackError(Exception):
    """The stack cannot be created (or would not work) as written."""


def already_exists(logical_id: str, identity: str, existing: tuple[str, ...]) -> None:
    """An ``AWS::SES::EmailIdentity`` for ``identity`` fails when the account has it already."""
    if identity.lower() in {e.lower() for e in existing}:
        raise StackError(
            f"CREATE_FAILED {logical_id} (AWS::SES::EmailIdentity): {identity} already exists in the account "
            "and region (HandlerErrorCode: AlreadyExists). Deploy with SenderIdentity=existing to use it.")


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def _logical_id(value) -> str | None:
    """The logical id a ``!Ref X`` / ``!GetAtt X.Arn`` names, else None."""
    if isinstance(value, dict) and len(value) == 1:
        (key, arg), = value.items()
        if key == "Ref":
            return arg
        if key == "Fn::GetAtt":
            return arg[0] if isinstance(arg, list) else arg.split(".", 1)[0]
    return None


def _key_resource(t: Template, key_id) -> tuple[str | None, str]:
    """(logical id of the template's ``AWS::KMS::Key`` the topic uses or None, how it is named)."""
    lid = _logical_id(key_id)
    if lid is not None:
        target = t.resources.get(lid, {})
        if target.get("Type") == "AWS::KMS::Alias":
            lid = _logical_id(target["Properties"]["TargetKeyId"])
        return lid, f"key {lid}"
    name = str(t.resolve(key_id))
    for alias_lid, alias in t.of_type("AWS::KMS::Alias").items():
        if t.resolve(alias["Properties"]["AliasName"]) in (name, name.rsplit(":", 1)[-1]):
            return _logical_id(alias["Properties"]["TargetKeyId"]), name
    return None, name


def _allows_cloudwatch(policy: dict) -> bool:
    """Does a key policy let CloudWatch use the key for SNS (both actions allowed, none denied)?
    Conditions are not evaluated."""
    def grants(st: dict, action: str) -> bool:
        principal = st.get("Principal", {})
        services = _as_list(principal.get("Service", [])) if isinstance(principal, dict) else []
        if principal != "*" and CLOUDWATCH not in services and (
                not isinstance(principal, dict) or "*" not in _as_list(principal.get("AWS", []))):
            return False
        return any(fnmatchcase(action.lower(), a.lower()) for a in _as_list(st.get("Action", [])))

    statements = _as_list(policy.get("Statement", []))
    return all(any(st.get("Effect") == "Allow" and grants(st, a) for st in statements)
               and not any(st.get("Effect") == "Deny" and grants(st, a) for st in statements)
               for a in KEY_ACTIONS)


def check_alarm_actions(t: Template) -> None:
    """Every SNS topic of the template that an alarm notifies must be one CloudWatch can
    publish to (see the module docstring); raise :class:`StackError` naming alarm and topic."""
    topics = t.of_type("AWS::SNS::Topic")
    for alarm_lid, alarm in t.of_type("AWS::CloudWatch::Alarm").items():
        props = alarm.get("Properties", {})
        for action in (a for key in ("AlarmActions", "OKActions", "InsufficientDataActions")
                       for a in _as_list(props.get(key, []))):
            topic_lid = _logical_id(action)
            if topic_lid not in topics:
                continue
            key_id = topics[topic_lid].get("Properties", {}).get("KmsMasterKeyId")
            if key_id is None:
                continue
            key_lid, key_name = _key_resource(t, key_id)
            why = None
            if key_name.rsplit(":", 1)[-1] == MANAGED_SNS_KEY:
                why = (f"encrypted with the AWS managed key {MANAGED_SNS_KEY}, whose key policy does not let "
                       f"{CLOUDWATCH} use it")
            elif key_lid is None or t.resources.get(key_lid, {}).get("Type") != "AWS::KMS::Key":
                why = f"encrypted with {key_name}, a key this template does not define (its key policy is unknown)"
            elif not _allows_cloudwatch(t.resources[key_lid].get("Properties", {}).get("KeyPolicy", {})):
                why = (f"encrypted with {key_name}, whose KeyPolicy does not allow {CLOUDWATCH} "
                       "kms:GenerateDataKey* and kms:Decrypt")
            if why:
                raise StackError(
                    f"alarm {alarm_lid} cannot notify SNS topic {topic_lid}: the topic is {why}. CloudWatch would drop "
                    "every notification. Remove the topic's KmsMasterKeyId, or use a customer managed key whose "
                    "policy allows it.")
