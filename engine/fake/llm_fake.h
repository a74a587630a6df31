/* llm_fake.h — `ratchet fake-llm`, a fake LLM server for specs and benchmarks. */
#ifndef RATCHET_FAKE_LLM_H
#define RATCHET_FAKE_LLM_H

extern const char fake_llm_usage[];
int fake_llm_main(int argc, char **argv);

#endif
