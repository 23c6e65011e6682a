"""Property test of the ``/recommend`` body: any JSON is a valid, bounded request or a
validation error (a 422 naming the field), never an exception that would be a 500."""

from __future__ import annotations

import math

from fuzz_records import fuzz, recommend_bodies
from hypothesis import given
from pydantic import ValidationError

from serving.schemas import MAX_ID, MAX_K, RecommendBody
from stylestream.records import ITEM_ID_MAX_BYTES


@fuzz(2_000)
@given(recommend_bodies)
def test_a_body_is_a_bounded_request_or_a_validation_error(body):
    try:
        request = RecommendBody.model_validate(body)
    except ValidationError as exc:
        assert exc.errors(), "a 422 names what is wrong"
        return
    assert 0 < len(request.user_id) <= MAX_ID and 1 <= request.k <= MAX_K and request.history
    for event in request.history:
        assert 0 < len(event.item_id) <= ITEM_ID_MAX_BYTES and event.kind in ("click", "purchase")
        assert event.ts is None or math.isfinite(event.ts)
