//! One sequence's sampler: greedy or top-p/temperature/seeded sampling, and, for structured
//! output, a grammar.
//!
//! The grammar is checked *after* sampling, not before: masking the whole vocabulary with a
//! grammar every step costs more than the decode of a small model (single stream 147 → 63 tok/s
//! measured), while the token the model wants is almost always allowed. So the token is sampled
//! from the plain distribution and the grammar asked about that one token; only when it refuses
//! is the grammar applied to every candidate and the token sampled again from what is left —
//! the same distribution as masking first (llama.cpp's own common sampler does the same).

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::logit_bias::LlamaLogitBias;
use llama_cpp_2::token::data::LlamaTokenData;
use llama_cpp_2::token::data_array::LlamaTokenDataArray;
use llama_cpp_2::token::LlamaToken;

use crate::{EngineError, SamplingParams};

/// Samples one sequence's tokens.
pub(crate) struct SequenceSampler {
    sampling: LlamaSampler,
    /// Temperature 0: the sampler is llama.cpp's greedy one, which keeps no state.
    greedy: bool,
    grammar: Option<LlamaSampler>,
    end_of_generation: LlamaToken,
}

impl SequenceSampler {
    /// The sampler for `params`; a grammar llama.cpp refuses is an error.
    pub(crate) fn new(model: &LlamaModel, params: &SamplingParams) -> Result<Self, EngineError> {
        let grammar = match &params.grammar {
            Some(text) => Some(LlamaSampler::grammar(model, text, "root").map_err(|e| EngineError::Grammar { reason: e.to_string() })?),
            None => None,
        };
        let n_vocab = model.n_vocab();
        if let Some((token, _)) = params.logit_bias.iter().find(|(token, _)| !(0..n_vocab).contains(token)) {
            return Err(EngineError::InvalidParameter { param: "logit_bias", reason: format!("token id {token} is outside the model's vocabulary (0 to {})", n_vocab - 1) });
        }
        // The fast greedy path reads the raw logits: only without penalties or biases.
        let adjusted = penalised(params) || !params.logit_bias.is_empty();
        Ok(Self { sampling: plain(params, n_vocab), greedy: params.temperature <= 0.0 && !adjusted, grammar, end_of_generation: model.vocab().eos() })
    }

    /// Samples (and accepts) the next token from the logits at `idx` of the last batch.
    pub(crate) fn sample(&mut self, ctx: &LlamaContext<'_>, idx: i32) -> LlamaToken {
        let Some(grammar) = self.grammar.as_mut() else {
            if self.greedy {
                // llama.cpp's greedy sampler first copies all logits into a candidate array
                // (~0.6 MB for a 49k vocabulary) for each sequence at each step; the same choice
                // read off the logits directly saves that copy.
                return LlamaToken(first_max(ctx.get_logits_ith(idx)));
            }
            return self.sampling.sample(ctx, idx);
        };
        let mut candidates = ctx.token_data_array_ith(idx);
        candidates.apply_sampler(&mut self.sampling);
        let wanted = candidates.selected_token();
        let allowed = wanted.is_some_and(|token| {
            let mut single = LlamaTokenDataArray::new(vec![LlamaTokenData::new(token, 1.0, 0.0)], false);
            single.apply_sampler(grammar);
            single.data.first().is_some_and(|d| d.logit().is_finite())
        });
        let token = match wanted {
            Some(token) if allowed => token,
            _ => {
                let mut candidates = ctx.token_data_array_ith(idx);
                candidates.apply_sampler(grammar);
                candidates.apply_sampler(&mut self.sampling);
                // The grammar always allows something (at least end of generation once it is
                // complete); should it not, the sequence ends rather than feed it a token it
                // refuses (llama.cpp would throw).
                match candidates.selected_token() {
                    Some(token) => token,
                    None => return self.end_of_generation,
                }
            }
        };
        grammar.accept(token);
        self.sampling.accept(token);
        token
    }
}

/// The index of the largest logit, the first of equals: exactly the choice of llama.cpp's greedy
/// sampler (`llama_sampler_greedy_apply`: a strict `>` scan from index 0, so a NaN first entry
/// wins and later NaNs never do). Two passes that vectorise (the largest value in 16 lanes, then
/// the first index holding it) instead of one scan that carries the best index along.
fn first_max(logits: &[f32]) -> i32 {
    let Some(&first) = logits.first() else { return 0 };
    if first.is_nan() {
        return 0;
    }
    let mut lanes = [first; 16];
    let mut chunks = logits.chunks_exact(16);
    for chunk in &mut chunks {
        for (lane, &logit) in lanes.iter_mut().zip(chunk) {
            // NaN compares false, so it never enters a lane: as in llama.cpp's scan.
            *lane = if logit > *lane { logit } else { *lane };
        }
    }
    let mut largest = first;
    for &logit in lanes.iter().chain(chunks.remainder()) {
        if logit > largest {
            largest = logit;
        }
    }
    // Exact equality is the point: the first entry holding that very value.
    #[allow(clippy::float_cmp)]
    let at = logits.iter().position(|&logit| logit == largest).unwrap_or(0);
    i32::try_from(at).unwrap_or(0)
}

/// A frequency or presence penalty is set.
fn penalised(params: &SamplingParams) -> bool {
    params.frequency_penalty != 0.0 || params.presence_penalty != 0.0
}

/// How many of the completion's latest tokens the frequency and presence penalties count
/// (llama.cpp keeps them in a ring of this size, 16 KB).
const PENALTY_WINDOW: i32 = 4096;

/// Logit biases, then frequency/presence penalties (when set); then greedy at temperature 0,
/// else top-p (when below 1), temperature and a seeded draw.
fn plain(params: &SamplingParams, n_vocab: i32) -> LlamaSampler {
    let mut chain = Vec::with_capacity(5);
    if !params.logit_bias.is_empty() {
        let biases: Vec<LlamaLogitBias> = params.logit_bias.iter().map(|&(token, bias)| LlamaLogitBias::new(LlamaToken(token), bias)).collect();
        chain.push(LlamaSampler::logit_bias(n_vocab, &biases));
    }
    if penalised(params) {
        chain.push(LlamaSampler::penalties(n_vocab, PENALTY_WINDOW, 1.0, params.frequency_penalty, params.presence_penalty));
    }
    if params.temperature <= 0.0 {
        if chain.is_empty() {
            return LlamaSampler::greedy();
        }
        chain.push(LlamaSampler::greedy());
        return LlamaSampler::chain_simple(chain);
    }
    let seed = params.seed.unwrap_or_else(|| RandomState::new().build_hasher().finish());
    // llama.cpp seeds are 32-bit: fold the 64-bit seed so every bit matters.
    #[allow(clippy::cast_possible_truncation)]
    let seed = (seed ^ (seed >> 32)) as u32;
    if params.top_p < 1.0 {
        chain.push(LlamaSampler::top_p(params.top_p, 1));
    }
    chain.push(LlamaSampler::temp(params.temperature));
    chain.push(LlamaSampler::dist(seed));
    LlamaSampler::chain_simple(chain)
}

#[cfg(test)]
mod tests {
    use super::first_max;

    #[test]
    fn the_greedy_choice_is_the_first_of_equal_maxima_as_in_llama_cpp() {
        assert_eq!(first_max(&[0.5, 2.0, -1.0, 2.0]), 1);
        assert_eq!(first_max(&[3.0, 3.0]), 0);
        assert_eq!(first_max(&[-5.0]), 0);
        assert_eq!(first_max(&[f32::NEG_INFINITY, -1e30, f32::NEG_INFINITY]), 1);
        // NaN compares false both ways: llama.cpp's scan keeps a NaN first entry and skips later ones.
        assert_eq!(first_max(&[f32::NAN, 1.0, 2.0]), 0);
        assert_eq!(first_max(&[1.0, f32::NAN, 2.0, f32::NAN]), 2);
    }

    /// llama.cpp's scan, as written there.
    fn scan(logits: &[f32]) -> i32 {
        let mut best = 0;
        for i in 1..logits.len() {
            if logits[i] > logits[best] {
                best = i;
            }
        }
        i32::try_from(best).unwrap()
    }

    #[test]
    fn the_two_pass_greedy_choice_equals_the_scan_on_vocabulary_sized_logits() {
        // A fixed pseudo-random sequence (xorshift), coarse values so that ties are common, and
        // NaN and infinities sprinkled in, over lengths around the 16-lane chunks.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..400 {
            let len = if round % 4 == 0 { 49_152 } else { 1 + (next() % 70) as usize };
            let logits: Vec<f32> = (0..len)
                .map(|_| match next() % 100 {
                    0 => f32::NAN,
                    1 => f32::INFINITY,
                    2 => f32::NEG_INFINITY,
                    r => f32::from(u8::try_from(r % 23).unwrap()) - 11.0,
                })
                .collect();
            assert_eq!(first_max(&logits), scan(&logits), "round {round}: {:?}", &logits[..len.min(40)]);
        }
    }
}
