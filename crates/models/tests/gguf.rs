//! A GGUF file written by PyPI `gguf==0.19.0` (`fixtures/make_gguf_fixture.py`): every
//! metadata type reads back, and every tensor type dequantises to what gguf's numpy
//! reference computed (stored beside it as `expect.NAME`).

#![allow(clippy::unwrap_used, missing_docs)]

use sov_models::{
    gguf::{Gguf, Value},
    quant::GgmlType,
};

const FIXTURE: &[u8] = include_bytes!("../fixtures/quant-blocks.gguf");

#[test]
fn metadata_of_every_type_reads_back() {
    let g = Gguf::parse(FIXTURE).unwrap();
    assert_eq!(g.version, 3);
    let get = |k: &str| g.get(k).unwrap_or_else(|| panic!("{k} missing")).clone();
    assert_eq!(get("test.u8"), Value::U8(200));
    assert_eq!(get("test.i8"), Value::I8(-100));
    assert_eq!(get("test.u16"), Value::U16(60000));
    assert_eq!(get("test.i16"), Value::I16(-30000));
    assert_eq!(get("test.u32"), Value::U32(4_000_000_000));
    assert_eq!(get("test.i32"), Value::I32(-2_000_000_000));
    assert_eq!(get("test.f32"), Value::F32(1.5));
    assert_eq!(get("test.u64"), Value::U64(1 << 60));
    assert_eq!(get("test.i64"), Value::I64(-(1 << 60)));
    assert_eq!(get("test.f64"), Value::F64(-2.25));
    assert_eq!(get("test.bool"), Value::Bool(true));
    assert_eq!(get("test.string").as_str(), Some("héllo"));
    assert_eq!(
        get("test.array_i32"),
        Value::Array(vec![Value::I32(1), Value::I32(-2), Value::I32(3)])
    );
    let arr = get("test.array_str");
    let strs: Vec<&str> = arr
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(strs, ["a", "bc", ""]);
    assert_eq!(
        g.get("general.architecture").unwrap().as_str(),
        Some("llama")
    );
}

#[test]
fn every_type_dequantises_like_ggufs_numpy_reference() {
    let g = Gguf::parse(FIXTURE).unwrap();
    let mut seen = Vec::new();
    for t in g.tensors.iter().filter(|t| !t.name.starts_with("expect.")) {
        let got = g.dequantize(FIXTURE, &t.name).unwrap();
        let want = g
            .dequantize(FIXTURE, &format!("expect.{}", t.name))
            .unwrap();
        assert_eq!(got.len(), want.len(), "{}", t.name);
        assert_eq!(got.len() as u64, t.len());
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            // The same f32 operations in a possibly different order: within an ulp or two.
            let tol = 4.0 * f32::EPSILON * b.abs().max(1e-6);
            assert!((a - b).abs() <= tol, "{} [{i}]: {a} vs {b}", t.name);
        }
        seen.push(t.ty);
    }
    for ty in [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::Bf16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q4K,
        GgmlType::Q5K,
        GgmlType::Q6K,
    ] {
        assert!(seen.contains(&ty), "{ty:?} not covered");
    }
}

#[test]
fn a_damaged_fixture_is_an_error_never_a_panic() {
    // Flip each byte of the header and table in turn.
    let g = Gguf::parse(FIXTURE).unwrap();
    for i in 0..g.data_offset as usize {
        let mut b = FIXTURE.to_vec();
        b[i] ^= 0xFF;
        if let Ok(g2) = Gguf::parse(&b) {
            for t in &g2.tensors {
                let _ = g2.dequantize(&b, &t.name);
            }
        }
    }
}
