"""The tracking routes take the engagement burst that follows a broadcast's delivery (template.yaml's
RouteSettings, sized by bench/broadcast_scaling.py): at 200 emails/s, Apple Mail Privacy Protection's
prefetches and link scanners' fetches arrive with the delivery, about 85 requests/s on /o and 115 on /c
at the modelled peak. Through the strict runtime's route throttling (429 past a route's bucket)."""
from collections import Counter

from conftest import START

from funnelpilot_local.aws_rules import Rules
from funnelpilot_local.runtime import ROOT, Runtime


def test_pixel_and_click_take_several_seconds_of_the_modelled_peak_at_once_and_keep_up_with_it(tmp_path):
    with Runtime(ROOT, stepped=True, start=START, state_dir=tmp_path / "local", log_level="WARNING",
                 rules=Rules()) as rt:
        invoked = Counter()
        rt.invoke_hook = lambda function, run: (invoked.update([function]), run())[1]
        for method in ("GET", "HEAD"):
            # 5 s of the modelled peak arriving in one instant (a burst the old limits, 200, refused half of);
            # one route after the other: 1,025 invocations at once would pass the account's 1,000 concurrency
            assert 429 not in [rt.http(method, "/o/not-a-token").status for _ in range(450)]
            assert rt.advance(1)
            assert 429 not in [rt.http(method, "/c/not-a-token").status for _ in range(575)]
            for _ in range(3):  # then the peak, second after second
                assert rt.advance(1)
                assert [rt.http(method, "/o/not-a-token").status for _ in range(90)] == [200] * 90
                assert [rt.http(method, "/c/not-a-token").status for _ in range(120)] == [404] * 120
            assert rt.advance(5)  # the buckets refill
        assert invoked["TrackOpenFunction"] == 2 * (450 + 270) and invoked["TrackClickFunction"] == 2 * (575 + 360)
        assert rt.http("GET", "/o/not-a-token").status == 200  # and still a pixel for an unknown token
