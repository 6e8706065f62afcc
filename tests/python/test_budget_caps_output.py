"""A budget is a cap, not an estimate: a budgeted tenant's request that sets no output limit
reserved `default_max_tokens` of output, but went to the provider without a limit, so the model
could write past the reservation and the day's spend past the budget (16 tokens against 10
reserved here: 0.051 spent of 0.05). It is now sent with `default_max_tokens` as its limit, in the
field each provider reads; a request with a limit of its own keeps it, a tenant without a budget
sends none.

The fake's `metered` model answers exactly the limit it is sent (16 tokens without one) and
reports the prompt as the gateway estimates it, at 1000 $/Mtok in and 2000 $/Mtok out."""

import httpx
import openai
import pytest

from conftest import Gateway, admin_stats, fake_provider_section, gateway_config, new_virtual_key, wait_for

PROMPT = "Please count these words for me, thanks."  # 40 characters: 10 tokens
# 10 prompt tokens and 10 output tokens: 0.01 + 0.02 USD; 16 output tokens would be 0.042.
CAPPED_COST = 0.03


TENANTS = ["budgeted", "budgeted-openai", "budgeted-responses", "free"]
BUDGET = 'budget = { daily_usd = 0.065, on_exceed = "reject", default_max_tokens = 10 }\n'


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, fake_provider):
    keys, tenants = {}, ""
    for name in TENANTS:
        keys[name], entry = new_virtual_key()
        tenants += f'[[tenants]]\nname = "{name}"\nkeys = ["{entry}"]\n' + (BUDGET if name != "free" else "")
    providers = (fake_provider_section(fake_provider)
                 + fake_provider_section(fake_provider, name="oai", kind="openai", extra_keys="responses_api = true\n"))
    gw = Gateway(tmp_path_factory.mktemp("budget-cap"), gateway_config(providers + tenants),
                 policy='[[rule]]\nname = "paid"\nroute = "fake/metered"\n')
    gw.keys = keys
    yield gw
    gw.stop()


def client(gw, tenant):
    return openai.OpenAI(base_url=gw.v1, api_key=gw.keys[tenant], max_retries=0)


def ask(gw, tenant, model="fake/metered", **kw):
    return client(gw, tenant).chat.completions.with_raw_response.create(model=model, messages=[{"role": "user", "content": PROMPT}], **kw)


def last_sent(fake_provider, path):
    return [r["body"] for r in httpx.get(f"{fake_provider}/control/requests").json() if r["path"] == path][-1]


def budget(gw, tenant):
    return admin_stats(gw)["budgets"][tenant]


def test_a_budgeted_request_without_a_limit_is_sent_with_the_budgets(gateway, fake_provider):
    answer = ask(gateway, "budgeted")
    assert answer.parse().usage.completion_tokens == 10
    assert float(answer.headers["x-switchyard-cost-usd"]) == pytest.approx(CAPPED_COST, abs=1e-12)
    sent = last_sent(fake_provider, "/v1/chat/completions")
    assert sent["max_tokens"] == 10 and "max_completion_tokens" not in sent, "openai-compatible servers read max_tokens"
    # Two such requests fit 0.065; a third is refused rather than taking the spend past it.
    ask(gateway, "budgeted")
    wait_for(lambda: budget(gateway, "budgeted")["reserved_usd"] == 0, what="settled")
    with pytest.raises(openai.RateLimitError):
        ask(gateway, "budgeted")
    assert budget(gateway, "budgeted")["spent_today_usd"] == pytest.approx(2 * CAPPED_COST, abs=1e-9)


def test_openai_is_sent_max_completion_tokens(gateway, fake_provider):
    assert ask(gateway, "budgeted-openai", model="oai/metered").parse().usage.completion_tokens == 10
    sent = last_sent(fake_provider, "/v1/chat/completions")
    assert sent["max_completion_tokens"] == 10 and "max_tokens" not in sent, "OpenAI's reasoning models refuse max_tokens"


def test_a_passed_through_responses_request_is_sent_max_output_tokens(gateway, fake_provider):
    client(gateway, "budgeted-responses").responses.create(model="oai/echo", input="hi")
    assert last_sent(fake_provider, "/v1/responses")["max_output_tokens"] == 10


def test_a_limit_of_its_own_or_no_budget_is_sent_as_it_came(gateway, fake_provider):
    ask(gateway, "budgeted-openai", model="oai/metered", max_tokens=3)
    sent = last_sent(fake_provider, "/v1/chat/completions")
    assert sent["max_completion_tokens"] == 3 and "max_tokens" not in sent, "in the field OpenAI reads"
    ask(gateway, "free")
    sent = last_sent(fake_provider, "/v1/chat/completions")
    assert "max_tokens" not in sent and "max_completion_tokens" not in sent
    client(gateway, "free").responses.create(model="oai/echo", input="hi")
    assert "max_output_tokens" not in last_sent(fake_provider, "/v1/responses")
