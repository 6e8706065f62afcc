//! The model names clients may send and the targets they resolve to.

use providers::ProviderConfig;

/// What a request's `model` means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelChoice {
    /// `auto`: the router decides.
    Auto,
    /// A concrete target, `local/<name>` or `provider/model`.
    Target(String),
}

/// The configured targets.
#[derive(Debug, Clone)]
pub struct Catalog {
    local_name: Option<String>,
    /// (provider name, model names)
    providers: Vec<(String, Vec<String>)>,
}

/// The `auto` model id.
pub const AUTO: &str = "auto";

impl Catalog {
    /// Builds the catalog from the configured local engine and providers.
    pub fn new(local_name: Option<&str>, providers: &[ProviderConfig]) -> Self {
        Self {
            local_name: local_name.map(str::to_owned),
            providers: providers
                .iter()
                .map(|p| (p.name.clone(), p.models.iter().map(|m| m.name.clone()).collect()))
                .collect(),
        }
    }

    /// `local/<name>`, if the engine is configured.
    pub fn local_target(&self) -> Option<String> {
        self.local_name.as_ref().map(|n| format!("local/{n}"))
    }

    /// Resolves a client's `model`: `auto`, the local name (or `local`, `local/<name>`), a
    /// configured `provider/model`, or a bare model name that exactly one provider serves.
    pub fn resolve(&self, model: &str) -> Option<ModelChoice> {
        if model == AUTO {
            return Some(ModelChoice::Auto);
        }
        if let Some(name) = &self.local_name {
            if model == name || model == "local" || model.strip_prefix("local/") == Some(name) {
                return self.local_target().map(ModelChoice::Target);
            }
        }
        if let Some((provider, name)) = model.split_once('/') {
            let known = self.providers.iter().any(|(p, models)| p == provider && models.iter().any(|m| m == name));
            return known.then(|| ModelChoice::Target(model.to_owned()));
        }
        let mut serving = self.providers.iter().filter(|(_, models)| models.iter().any(|m| m == model));
        match (serving.next(), serving.next()) {
            (Some((provider, _)), None) => Some(ModelChoice::Target(format!("{provider}/{model}"))),
            _ => None,
        }
    }

    /// Every model id for `/v1/models`: the local name, each `provider/model`, then `auto`.
    pub fn model_ids(&self) -> Vec<(String, String)> {
        let mut ids = Vec::new();
        if let Some(name) = &self.local_name {
            ids.push((name.clone(), "switchyard-local".to_owned()));
        }
        for (provider, models) in &self.providers {
            ids.extend(models.iter().map(|m| (format!("{provider}/{m}"), provider.clone())));
        }
        ids.push((AUTO.to_owned(), "switchyard".to_owned()));
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> Catalog {
        Catalog {
            local_name: Some("local-small".into()),
            providers: vec![
                ("openai".into(), vec!["gpt-4o".into(), "shared".into()]),
                ("vllm".into(), vec!["llama".into(), "shared".into()]),
            ],
        }
    }

    #[test]
    fn resolves_every_spelling() {
        let c = catalog();
        assert_eq!(c.resolve("auto"), Some(ModelChoice::Auto));
        for local in ["local-small", "local", "local/local-small"] {
            assert_eq!(c.resolve(local), Some(ModelChoice::Target("local/local-small".into())), "{local}");
        }
        assert_eq!(c.resolve("openai/gpt-4o"), Some(ModelChoice::Target("openai/gpt-4o".into())));
        assert_eq!(c.resolve("llama"), Some(ModelChoice::Target("vllm/llama".into())));
    }

    #[test]
    fn ambiguous_or_unknown_names_do_not_resolve() {
        let c = catalog();
        assert_eq!(c.resolve("shared"), None);
        assert_eq!(c.resolve("openai/llama"), None);
        assert_eq!(c.resolve("gpt-5"), None);
        assert_eq!(c.resolve("local/other"), None);
    }

    #[test]
    fn lists_local_then_providers_then_auto() {
        let ids: Vec<String> = catalog().model_ids().into_iter().map(|(id, _)| id).collect();
        assert_eq!(ids, ["local-small", "openai/gpt-4o", "openai/shared", "vllm/llama", "vllm/shared", "auto"]);
    }
}
