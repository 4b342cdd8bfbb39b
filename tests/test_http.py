"""funnelpilot.http: the resolver every powertools HTTP handler is built from."""
import json

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext

from funnelpilot import http
from funnelpilot.errors import InvalidField


def _event(method: str, path: str) -> dict:
    return {"version": "2.0", "routeKey": f"{method} {path}", "rawPath": path, "rawQueryString": "",
            "headers": {}, "isBase64Encoded": False,
            "requestContext": {"http": {"method": method, "path": path, "sourceIp": "192.0.2.1",
                                        "userAgent": "test"}, "stage": "$default"}}


class _Context(LambdaContext):
    _function_name, _function_version, _invoked_function_arn = "fn", "1", "arn:aws:lambda:us-east-1:1:function:fn"
    _memory_limit_in_mb, _aws_request_id = 128, "req-1"


def test_invalid_field_becomes_a_400_json_body_with_the_field():
    app = http.resolver()

    @app.get("/thing")
    def thing():
        raise InvalidField("email", "email is not valid")

    handler = http.lambda_handler(app, Logger(service="test"))
    response = handler(_event("GET", "/thing"), _Context())
    assert response["statusCode"] == 400
    assert json.loads(response["body"]) == {"error": "email is not valid", "field": "email"}
