import os
import tests.integration.test_schemathesis as m
m.SEED = int(os.environ.get("ST_SEED", "1"))
m.MAX_EXAMPLES = int(os.environ.get("ST_N", "25"))
m.RUN_SECONDS = 900
from tests.integration.test_schemathesis import settings  # noqa
test_explore = m.test_schemathesis_finds_no_server_error_and_no_undocumented_response
