-- wrk: POST one small chat request (with a key when SWITCHYARD_BENCH_KEY... is baked in by run.sh).
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer BENCH_KEY"
wrk.body = '{"model":"MODEL","messages":[{"role":"user","content":"Summarise the plot of Hamlet in one sentence, please."}],"max_tokens":64}'
