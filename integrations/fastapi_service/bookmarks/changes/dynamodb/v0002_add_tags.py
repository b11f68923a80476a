from __future__ import annotations

from typing import Any

from flamingock_async import Recovery, change_unit


@change_unit(
    id="add-bookmark-tags",
    order="0002",
    author="bookmarks",
    transactional=False,
    recovery=Recovery.ALWAYS_RETRY,
)
class AddBookmarkTags:
    """Give every bookmark stored before tags existed an empty tag list; safe to run again."""

    async def execute(self, dynamodb: Any) -> None:
        arguments: dict[str, Any] = {
            "TableName": "bookmarks",
            "FilterExpression": "attribute_not_exists(tags)",
            "ProjectionExpression": "id",
        }
        while True:
            page = await dynamodb.scan(**arguments)
            for item in page.get("Items", []):
                await dynamodb.update_item(
                    TableName="bookmarks",
                    Key={"id": item["id"]},
                    UpdateExpression="SET tags = if_not_exists(tags, :empty)",
                    ExpressionAttributeValues={":empty": {"L": []}},
                )
            if "LastEvaluatedKey" not in page:
                return
            arguments["ExclusiveStartKey"] = page["LastEvaluatedKey"]
