"""llmrun inside other frameworks: each module adapts llmrun's runners to one framework's
own interface, and imports that framework only when the module itself is imported.

- `llmrun.integrations.langchain`: `ChatLlmrun`, a LangChain chat model.
- `llmrun.integrations.litellm`: llmrun as a LiteLLM custom provider (`model="llmrun/<runner>/<model>"`).
- `llmrun.integrations.simplellmfunc`: an `LLM_Interface` of SimpleLLMFunc.
- `llmrun.integrations.spoon`: an `LLMProviderInterface` of spoon-ai.
- `llmrun.integrations.anyllm`: an any-llm provider.
"""
