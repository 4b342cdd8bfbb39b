"""EventBridge -> funnels. Every rule's InputTransformer names the route:
enter (a funnel's trigger), handoff (a ``funnel.handoff`` to it: entered or refused with its
reason, never dropped), goal (its goal/exit events) and resume (events that may end a ``wait_for`` step)."""
from aws_lambda_powertools import Logger

from funnelpilot import funnels

logger = Logger()


def _enter(event: dict) -> dict:
    draining = bool(event.get("draining"))
    result = {"execution": funnels.enter(funnel=event["funnel"], state_machine_arn=event["state_machine"],
                                         entry_rule=event["entry_rule"], event=event["event"],
                                         reenter_after=float(event.get("reenter_after") or 0),
                                         start_wait=event.get("start_wait"), draining=draining)}
    return result | {"refused": "draining"} if draining else result


def _handoff(event: dict) -> dict:
    return funnels.handoff(funnel=event["funnel"], state_machine_arn=event["state_machine"],
                           entry_rule=event["entry_rule"], event=event["event"],
                           reenter_after=float(event.get("reenter_after") or 0), mode=event.get("handoff") or "enter",
                           start_wait=event.get("start_wait"), draining=bool(event.get("draining")))


def _goal(event: dict) -> dict:
    return {"step": funnels.goal(funnel=event["funnel"], kind=event.get("kind", "goal"), event=event["event"])}


def _resume(event: dict) -> dict:
    return {"resumed": funnels.resume(event["event"])}


ROUTES = {"enter": _enter, "handoff": _handoff, "goal": _goal, "resume": _resume}


@logger.inject_lambda_context
def handler(event: dict, context) -> dict:
    route = event.get("route", "enter")
    result = ROUTES[route](event)
    logger.info("funnel route", extra={"route": route, "funnel": event.get("funnel"),
                                       "contact_id": event["event"]["detail"].get("contact_id"), **result})
    return result
