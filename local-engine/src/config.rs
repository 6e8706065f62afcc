use std::path::PathBuf;

use serde::Deserialize;

use crate::EngineError;

/// The `[local]` section of `config/gateway.toml`: the embedded engine.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EngineConfig {
    /// Path of the GGUF model file, relative to the working directory.
    pub model: PathBuf,
    /// The model id clients see (targets are written `local/<name>`).
    #[serde(default = "default_name")]
    pub name: String,
    /// Total KV cells; each of the `parallel` sequences gets `context / parallel` of them.
    #[serde(default = "default_context")]
    pub context: u32,
    /// CPU threads used for decoding.
    #[serde(default = "default_threads")]
    pub threads: u32,
    /// Maximum number of sequences decoded together.
    #[serde(default = "default_parallel")]
    pub parallel: u32,
    /// Maximum number of requests waiting for a slot; beyond it the engine is overloaded.
    #[serde(default = "default_queue")]
    pub queue: usize,
    /// Amortised cost of local tokens in USD per million tokens, for savings figures.
    #[serde(default)]
    pub cost_per_mtok: f64,
    /// Layers offloaded to the GPU (needs the `cuda` build); 0 keeps everything on the CPU.
    #[serde(default)]
    pub gpu_layers: u32,
    /// Host memory for saved prompt states (MiB); 0 turns the host prompt cache off.
    #[serde(default = "default_prompt_cache_mib")]
    pub prompt_cache_mib: u32,
    /// A sequence's greedy output never depends on what else is in its batch: flash attention
    /// runs over an 8-bit (`Q8_0`) KV cache, for which llama.cpp's CPU kernel always takes its
    /// row-by-row path (its faster tiled and split-KV paths, picked by the number of queries in a
    /// step, reorder floating-point sums). `false`: an `F16` KV cache, flash attention as llama.cpp
    /// chooses; concurrent or partly cached prompts may then answer differently.
    #[serde(default = "default_batch_invariant")]
    pub batch_invariant: bool,
    /// Latency target: a new request's predicted time to first token (ms). Requests whose rule
    /// has `spill` go there when the prediction is above it. Unset: no TTFT target.
    #[serde(default)]
    pub slo_ttft_ms: Option<u32>,
    /// Latency target: a new request's predicted decode rate (tokens/s per stream). Unset: none.
    #[serde(default)]
    pub slo_decode_tok_s: Option<f64>,
    /// The simple spill rule instead of the prediction: spill while more than this many
    /// requests wait for a slot. For comparison; the latency targets are what users want.
    #[serde(default)]
    pub spill_queue_depth: Option<u64>,
}

const fn default_batch_invariant() -> bool {
    true
}

const fn default_prompt_cache_mib() -> u32 {
    256
}

fn default_name() -> String {
    "local-small".to_owned()
}

const fn default_context() -> u32 {
    8192
}

fn default_threads() -> u32 {
    std::thread::available_parallelism().map_or(2, |n| u32::try_from(n.get()).unwrap_or(2))
}

const fn default_parallel() -> u32 {
    8
}

const fn default_queue() -> usize {
    256
}

impl EngineConfig {
    /// A configuration with every optional field at its default.
    pub fn with_model(model: impl Into<PathBuf>) -> Self {
        Self {
            model: model.into(),
            name: default_name(),
            context: default_context(),
            threads: default_threads(),
            parallel: default_parallel(),
            queue: default_queue(),
            cost_per_mtok: 0.0,
            gpu_layers: 0,
            prompt_cache_mib: default_prompt_cache_mib(),
            batch_invariant: default_batch_invariant(),
            slo_ttft_ms: None,
            slo_decode_tok_s: None,
            spill_queue_depth: None,
        }
    }

    /// KV cells each sequence may use: every sequence has its own stream of `context / parallel`
    /// cells, so prompt + completion of one request must fit there.
    pub fn seq_cells(&self) -> u32 {
        self.context / self.parallel.max(1)
    }

    /// Static checks that need no model: returns a message per problem.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.name.is_empty() || self.name.contains('/') {
            problems.push(format!("local.name {:?} must be non-empty and contain no '/'", self.name));
        }
        if self.seq_cells() < 64 {
            problems.push(format!(
                "local.context = {} leaves {} cells per sequence with parallel = {}; each sequence needs at least 64",
                self.context,
                self.seq_cells(),
                self.parallel
            ));
        }
        if self.parallel == 0 || self.parallel > 256 {
            problems.push(format!("local.parallel = {} must be between 1 and 256", self.parallel));
        }
        if self.threads == 0 {
            problems.push("local.threads must be at least 1".to_owned());
        }
        if self.queue == 0 {
            problems.push("local.queue must be at least 1".to_owned());
        }
        if !self.cost_per_mtok.is_finite() || self.cost_per_mtok < 0.0 {
            problems.push("local.cost_per_mtok must be a non-negative number".to_owned());
        }
        if self.slo_ttft_ms == Some(0) {
            problems.push("local.slo_ttft_ms must be at least 1 (leave it out for no TTFT target)".to_owned());
        }
        if self.slo_decode_tok_s.is_some_and(|r| !r.is_finite() || r <= 0.0) {
            problems.push("local.slo_decode_tok_s must be a positive number (leave it out for no decode-rate target)".to_owned());
        }
        if self.spill_queue_depth.is_some() && (self.slo_ttft_ms.is_some() || self.slo_decode_tok_s.is_some()) {
            problems.push("local.spill_queue_depth replaces the latency targets; set either it or slo_ttft_ms / slo_decode_tok_s".to_owned());
        }
        if !self.model.is_file() {
            problems.push(format!(
                "local.model {} does not exist (run `make model` to fetch the default model)",
                self.model.display()
            ));
        } else if let Err(EngineError::Template { reason }) = crate::chat_template_of(&self.model) {
            // Read from the file's header, without loading the weights: the engine would fail to
            // start on it.
            problems.push(format!("local.model: {reason}; it must be a GGUF chat model"));
        } else if let Some(reason) = crate::gguf_truncation(&self.model) {
            problems.push(format!("local.model: {reason}"));
        }
        problems
    }

    /// Settings that are valid but will not do what they say in this build.
    pub fn warnings(&self) -> Vec<String> {
        if self.gpu_layers > 0 && !cfg!(feature = "cuda") {
            vec![format!(
                "local.gpu_layers = {} has no effect: this binary was built without the `cuda` feature, so every layer runs on the CPU",
                self.gpu_layers
            )]
        } else {
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_optional_fields() {
        let cfg: EngineConfig = toml::from_str(r#"model = "m.gguf""#).unwrap();
        assert_eq!(cfg.name, "local-small");
        assert_eq!(cfg.context, 8192);
        assert_eq!(cfg.parallel, 8);
        assert_eq!(cfg.queue, 256);
    }

    #[test]
    fn gpu_layers_without_the_cuda_build_are_a_warning() {
        let mut cfg = EngineConfig::with_model("m.gguf");
        assert!(cfg.warnings().is_empty());
        cfg.gpu_layers = 5;
        let warnings = cfg.warnings();
        assert_eq!(warnings.len(), usize::from(!cfg!(feature = "cuda")), "{warnings:?}");
    }

    #[test]
    fn rejects_unknown_key() {
        let err = toml::from_str::<EngineConfig>("model = \"m\"\nthreadz = 3\n").unwrap_err();
        assert!(err.to_string().contains("threadz"), "{err}");
    }

    #[test]
    fn reports_missing_model_and_bad_values() {
        let mut cfg = EngineConfig::with_model("/nonexistent/model.gguf");
        cfg.parallel = 0;
        cfg.name = "a/b".into();
        let problems = cfg.problems().join("\n");
        assert!(problems.contains("does not exist"), "{problems}");
        assert!(problems.contains("parallel"), "{problems}");
        assert!(problems.contains("local.name"), "{problems}");
    }
}
