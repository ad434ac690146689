"""Submit and read through the Flask test client against a real Postgres."""

from tests.helpers import SEED_ORDER


def test_submit_then_get_returns_pending_task(client, auth):
    headers = auth.key("*")
    response = client.post("/api/v1/tasks", json=SEED_ORDER, headers=headers)
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert body["status"] == "PENDING"
    assert response.headers["Location"].endswith(body["id"])
    task = client.get(f"/api/v1/tasks/{body['id']}", headers=headers).get_json()
    assert task["input"] == SEED_ORDER["input"]
    assert task["workflowInstanceId"] == "order-workflow-789"
