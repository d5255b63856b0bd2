//! Checks an imported model file's structure before XGBoost sees it.
//!
//! XGBoost trusts the files it loads: a child index out of range or a cycle among nodes, a split on
//! a feature the model does not have, or a gblinear model can crash the process or hang it when
//! the model is evaluated. An import is therefore parsed here first (JSON, or XGBoost's UBJSON) and
//! refused with a clear error unless it is a tree model whose every tree is a proper binary tree
//! over the model's features, within sane sizes.

use std::collections::BTreeMap;

/// Most features an imported model may declare.
pub(crate) const MAX_FEATURES: u64 = 1_000_000;
/// Most trees an imported model may hold.
pub(crate) const MAX_TREES: u64 = 100_000;
/// Most nodes one tree may hold.
pub(crate) const MAX_NODES: u64 = 1 << 22;
/// Deepest nesting of arrays and objects a model file may have.
const MAX_DEPTH: usize = 32;
/// Most classes (output groups) an imported model may declare.
const MAX_CLASSES: u64 = 10_000;

/// A model file's structure as parsed: numeric arrays of UBJSON files are kept compactly
/// (integers as they are, floating-point ones by their length only).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Node {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Array(Vec<Node>),
    Ints(Vec<i64>),
    /// A typed array of floating-point numbers: only its length matters here.
    Floats(usize),
    Object(BTreeMap<String, Node>),
}

impl Node {
    fn get(&self, key: &str) -> Option<&Node> {
        match self {
            Node::Object(map) => map.get(key),
            _ => None,
        }
    }

    /// The node at a `/`-separated path of object keys.
    fn at(&self, path: &str) -> Result<&Node, String> {
        path.split('/').try_fold(self, |node, key| {
            node.get(key).ok_or_else(|| format!("{path} is missing"))
        })
    }

    fn len(&self) -> Option<usize> {
        match self {
            Node::Array(items) => Some(items.len()),
            Node::Ints(items) => Some(items.len()),
            Node::Floats(n) => Some(*n),
            _ => None,
        }
    }

    /// The integers of an array (of integers, or of whole numbers).
    fn ints(&self) -> Option<Vec<i64>> {
        match self {
            Node::Ints(items) => Some(items.clone()),
            Node::Array(items) => items.iter().map(Node::as_int).collect(),
            _ => None,
        }
    }

    fn as_int(&self) -> Option<i64> {
        match self {
            Node::Int(v) => Some(*v),
            Node::Float(v) if v.fract() == 0.0 && v.abs() < 9.0e15 => Some(*v as i64),
            _ => None,
        }
    }

    /// XGBoost writes parameters as strings ("3"); numbers are taken too.
    fn as_count(&self) -> Option<u64> {
        match self {
            Node::Str(s) => s.trim().parse().ok(),
            other => other.as_int().and_then(|v| u64::try_from(v).ok()),
        }
    }
}

/// Parses a model file (JSON or UBJSON) and checks its structure; the error says what is wrong.
pub(crate) fn check_model(bytes: &[u8]) -> Result<(), String> {
    check_structure(&parse(bytes)?)
}

/// A model file as a [`Node`]: JSON when it parses as JSON, else UBJSON.
pub(crate) fn parse(bytes: &[u8]) -> Result<Node, String> {
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(bytes) {
        return from_json(&value, 0);
    }
    let mut reader = Ubjson { bytes, at: 0 };
    let node = reader
        .value(0)
        .map_err(|e| format!("neither JSON nor UBJSON: {e}"))?;
    if reader.at != bytes.len() {
        return Err(format!(
            "UBJSON: {} bytes after the model",
            bytes.len() - reader.at
        ));
    }
    Ok(node)
}

fn from_json(value: &serde_json::Value, depth: usize) -> Result<Node, String> {
    use serde_json::Value;
    if depth > MAX_DEPTH {
        return Err(format!("nested deeper than {MAX_DEPTH}"));
    }
    Ok(match value {
        Value::Null => Node::Null,
        Value::Bool(b) => Node::Bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(v) => Node::Int(v),
            None => Node::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => Node::Str(s.clone()),
        Value::Array(items) => Node::Array(
            items
                .iter()
                .map(|v| from_json(v, depth + 1))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => Node::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), from_json(v, depth + 1)?)))
                .collect::<Result<_, String>>()?,
        ),
    })
}

/// A reader of XGBoost's UBJSON: every length is checked against the bytes left before anything
/// is allocated.
struct Ubjson<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Ubjson<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        if n > self.bytes.len() - self.at {
            return Err(format!("truncated at byte {}", self.at));
        }
        let slice = &self.bytes[self.at..self.at + n];
        self.at += n;
        Ok(slice)
    }

    fn byte(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn value(&mut self, depth: usize) -> Result<Node, String> {
        let marker = self.byte()?;
        self.typed(marker, depth)
    }

    fn typed(&mut self, marker: u8, depth: usize) -> Result<Node, String> {
        if depth > MAX_DEPTH {
            return Err(format!("nested deeper than {MAX_DEPTH}"));
        }
        Ok(match marker {
            b'Z' => Node::Null,
            b'T' => Node::Bool(true),
            b'F' => Node::Bool(false),
            b'i' | b'U' | b'I' | b'l' | b'L' => Node::Int(self.int(marker)?),
            b'd' => Node::Float(f32::from_be_bytes(self.take(4)?.try_into().unwrap()) as f64),
            b'D' => Node::Float(f64::from_be_bytes(self.take(8)?.try_into().unwrap())),
            b'C' => Node::Str(char::from(self.byte()?).to_string()),
            b'S' | b'H' => Node::Str(self.string()?),
            b'[' => self.array(depth)?,
            b'{' => self.object(depth)?,
            other => {
                return Err(format!(
                    "unknown marker {other:#04x} at byte {}",
                    self.at - 1
                ))
            }
        })
    }

    fn int(&mut self, marker: u8) -> Result<i64, String> {
        Ok(match marker {
            b'i' => self.byte()? as i8 as i64,
            b'U' => self.byte()? as i64,
            b'I' => i16::from_be_bytes(self.take(2)?.try_into().unwrap()) as i64,
            b'l' => i32::from_be_bytes(self.take(4)?.try_into().unwrap()) as i64,
            b'L' => i64::from_be_bytes(self.take(8)?.try_into().unwrap()),
            other => return Err(format!("expected an integer, found marker {other:#04x}")),
        })
    }

    /// A length (an integer value), at most the bytes left (each element takes at least one).
    fn length(&mut self) -> Result<usize, String> {
        let marker = self.byte()?;
        let n = self.int(marker)?;
        let left = self.bytes.len() - self.at;
        usize::try_from(n)
            .ok()
            .filter(|n| *n <= left)
            .ok_or_else(|| format!("length {n} at byte {} is beyond the file", self.at))
    }

    fn string(&mut self) -> Result<String, String> {
        let n = self.length()?;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| "a string is not UTF-8".to_owned())
    }

    /// The optional `$type` and `#count` of a container.
    fn header(&mut self) -> Result<(Option<u8>, Option<usize>), String> {
        let kind = if self.peek() == Some(b'$') {
            self.at += 1;
            Some(self.byte()?)
        } else {
            None
        };
        let count = if self.peek() == Some(b'#') {
            self.at += 1;
            Some(self.length()?)
        } else if kind.is_some() {
            return Err("a typed container without a count".into());
        } else {
            None
        };
        Ok((kind, count))
    }

    fn array(&mut self, depth: usize) -> Result<Node, String> {
        match self.header()? {
            (Some(kind @ (b'i' | b'U' | b'I' | b'l' | b'L')), Some(n)) => {
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.int(kind)?);
                }
                Ok(Node::Ints(items))
            }
            (Some(kind @ (b'd' | b'D')), Some(n)) => {
                let width = if kind == b'd' { 4 } else { 8 };
                self.take(n.checked_mul(width).ok_or("array too large")?)?;
                Ok(Node::Floats(n))
            }
            (Some(kind), Some(n)) => (0..n)
                .map(|_| self.typed(kind, depth + 1))
                .collect::<Result<_, _>>()
                .map(Node::Array),
            (None, Some(n)) => (0..n)
                .map(|_| self.value(depth + 1))
                .collect::<Result<_, _>>()
                .map(Node::Array),
            (_, None) => {
                let mut items = Vec::new();
                while self.peek() != Some(b']') {
                    items.push(self.value(depth + 1)?);
                }
                self.at += 1;
                Ok(Node::Array(items))
            }
        }
    }

    fn object(&mut self, depth: usize) -> Result<Node, String> {
        let (kind, count) = self.header()?;
        let mut map = BTreeMap::new();
        let mut read = 0;
        loop {
            match count {
                Some(n) if read == n => break,
                None if self.peek() == Some(b'}') => {
                    self.at += 1;
                    break;
                }
                _ => {}
            }
            let key = self.string()?;
            let value = match kind {
                Some(kind) => self.typed(kind, depth + 1)?,
                None => self.value(depth + 1)?,
            };
            map.insert(key, value);
            read += 1;
        }
        Ok(Node::Object(map))
    }
}

/// A count parameter (XGBoost writes them as strings) no larger than `max`.
fn count(model: &Node, path: &str, max: u64) -> Result<u64, String> {
    let n = model
        .at(path)?
        .as_count()
        .ok_or_else(|| format!("{path} is not a count"))?;
    if n > max {
        return Err(format!("{path} is {n}, more than {max}"));
    }
    Ok(n)
}

/// The checks proper, on a parsed model.
pub(crate) fn check_structure(model: &Node) -> Result<(), String> {
    let learner = model.at("learner")?;
    let features = count(learner, "learner_model_param/num_feature", MAX_FEATURES)?;
    if features == 0 {
        return Err("learner_model_param/num_feature is 0".into());
    }
    let classes = count(learner, "learner_model_param/num_class", MAX_CLASSES)?.max(1);
    let targets = learner
        .at("learner_model_param/num_target")
        .ok()
        .and_then(Node::as_count)
        .unwrap_or(1);
    if targets > 1 {
        return Err(format!(
            "{targets} targets: only single-target models are supported"
        ));
    }
    for key in ["feature_names", "feature_types"] {
        match learner.get(key).and_then(Node::len) {
            Some(n) if n != 0 && n as u64 != features => {
                return Err(format!("{n} {key} for {features} features"))
            }
            _ => {}
        }
    }
    let booster = learner.at("gradient_booster")?;
    let trees = match booster.get("name") {
        Some(Node::Str(name)) if name == "gbtree" => booster.at("model")?,
        Some(Node::Str(name)) if name == "dart" => booster.at("gbtree/model")?,
        Some(Node::Str(name)) => {
            return Err(format!(
                "a {name} model: only tree models (gbtree, dart) can be imported"
            ))
        }
        _ => return Err("gradient_booster/name is missing".into()),
    };
    check_trees(trees, features, classes)
}

/// The trees of a gbtree model: as many as it says, each a proper tree.
fn check_trees(model: &Node, features: u64, classes: u64) -> Result<(), String> {
    let declared = count(model, "gbtree_model_param/num_trees", MAX_TREES)?;
    let Some(Node::Array(trees)) = model.get("trees") else {
        return Err("trees is not an array".into());
    };
    if trees.len() as u64 != declared {
        return Err(format!(
            "{} trees, but num_trees is {declared}",
            trees.len()
        ));
    }
    let info = model
        .get("tree_info")
        .and_then(Node::ints)
        .ok_or("tree_info is missing")?;
    if info.len() != trees.len() || info.iter().any(|g| *g < 0 || *g as u64 >= classes) {
        return Err(format!(
            "tree_info must give each of the {} trees a group below {classes}",
            trees.len()
        ));
    }
    if let Some(indptr) = model.get("iteration_indptr").and_then(Node::ints) {
        let ordered = indptr.windows(2).all(|w| w[0] <= w[1]);
        if indptr.first() != Some(&0) || !ordered || indptr.last() != Some(&(trees.len() as i64)) {
            return Err("iteration_indptr does not partition the trees".into());
        }
    }
    let mut total_nodes = 0u64;
    for (i, tree) in trees.iter().enumerate() {
        total_nodes += check_tree(tree, features).map_err(|e| format!("tree {i}: {e}"))?;
        if total_nodes > MAX_NODES * 4 {
            return Err(format!("more than {} nodes in all", MAX_NODES * 4));
        }
    }
    Ok(())
}

/// The arrays of a tree, one entry per node.
const NODE_ARRAYS: [&str; 10] = [
    "left_children",
    "right_children",
    "parents",
    "split_indices",
    "split_conditions",
    "split_type",
    "default_left",
    "base_weights",
    "loss_changes",
    "sum_hessian",
];

/// One tree: every node array as long as the tree, numerical splits on existing features, and
/// every node reached once from the root (no index out of range, no cycle, no shared child).
/// Returns the number of nodes.
fn check_tree(tree: &Node, features: u64) -> Result<u64, String> {
    let nodes = check_tree_param(tree, features)?;
    check_node_arrays(tree, nodes)?;
    TreeLinks::of(tree)?.walk(nodes, features)?;
    Ok(nodes)
}

/// The tree's `tree_param`: some nodes, scalar leaves, no more features than the model's.
/// Returns the number of nodes.
fn check_tree_param(tree: &Node, features: u64) -> Result<u64, String> {
    let nodes = count(tree, "tree_param/num_nodes", MAX_NODES)?;
    if nodes == 0 {
        return Err("no nodes".into());
    }
    let leaf_size = count(tree, "tree_param/size_leaf_vector", u64::MAX).unwrap_or(1);
    if leaf_size > 1 {
        return Err("vector leaves (multi-target trees) are not supported".into());
    }
    if count(tree, "tree_param/num_feature", u64::MAX)? > features {
        return Err(format!(
            "tree_param/num_feature is more than the model's {features}"
        ));
    }
    Ok(nodes)
}

/// Every node array holds one entry per node.
fn check_node_arrays(tree: &Node, nodes: u64) -> Result<(), String> {
    for key in NODE_ARRAYS {
        let n = tree
            .get(key)
            .and_then(Node::len)
            .ok_or(format!("{key} is missing"))?;
        if n as u64 != nodes {
            return Err(format!("{key} has {n} entries for {nodes} nodes"));
        }
    }
    Ok(())
}

/// The node arrays that link and split a tree's nodes.
struct TreeLinks {
    left: Vec<i64>,
    right: Vec<i64>,
    parents: Vec<i64>,
    split: Vec<i64>,
    kind: Vec<i64>,
}

impl TreeLinks {
    fn of(tree: &Node) -> Result<Self, String> {
        let ints = |key: &str| {
            tree.get(key)
                .and_then(Node::ints)
                .ok_or(format!("{key} is not integers"))
        };
        Ok(Self {
            left: ints("left_children")?,
            right: ints("right_children")?,
            parents: ints("parents")?,
            split: ints("split_indices")?,
            kind: ints("split_type")?,
        })
    }

    /// Walks the tree from the root: each node reached once, from its parent, and each split
    /// numerical on an existing feature. The arrays are `nodes` long.
    fn walk(&self, nodes: u64, features: u64) -> Result<(), String> {
        let mut seen = vec![false; nodes as usize];
        let mut stack = vec![0usize];
        seen[0] = true;
        while let Some(i) = stack.pop() {
            if self.left[i] == -1 && self.right[i] == -1 {
                continue;
            }
            self.check_split(i, features)?;
            for child in [self.left[i], self.right[i]] {
                let c = self.check_child(i, child, nodes, &mut seen)?;
                stack.push(c);
            }
        }
        Ok(())
    }

    /// Node `i` splits numerically on an existing feature.
    fn check_split(&self, i: usize, features: u64) -> Result<(), String> {
        if self.kind[i] != 0 {
            return Err(format!("node {i}: categorical splits are not supported"));
        }
        if self.split[i] < 0 || self.split[i] as u64 >= features {
            return Err(format!(
                "node {i} splits on feature {}, the model has {features}",
                self.split[i]
            ));
        }
        Ok(())
    }

    /// Node `i`'s child is in range, not reached before, and has `i` as its parent; returns
    /// its index.
    fn check_child(
        &self,
        i: usize,
        child: i64,
        nodes: u64,
        seen: &mut [bool],
    ) -> Result<usize, String> {
        let c = usize::try_from(child)
            .ok()
            .filter(|c| (1..nodes as usize).contains(c))
            .ok_or(format!(
                "node {i} has child {child}, out of range (nodes: {nodes})"
            ))?;
        if std::mem::replace(&mut seen[c], true) {
            return Err(format!(
                "node {c} is reached twice (a cycle or a shared child)"
            ));
        }
        if self.parents[c] != i as i64 {
            return Err(format!("node {c}'s parent is {}, not {i}", self.parents[c]));
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::xgboost::{Booster, Matrix};
    use serde_json::{json, Value};

    /// A small valid model (3 features, 3 trees of depth up to 3), as JSON and as UBJSON.
    fn valid_model() -> (Value, Vec<u8>) {
        let names: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let values: Vec<f32> = (0..120).map(|i| ((i * 37) % 101) as f32 / 10.0).collect();
        let mut data = Matrix::dense(&values, 40, &names).unwrap();
        let labels: Vec<f32> = (0..40).map(|i| (i % 7) as f32).collect();
        data.set_labels(&labels).unwrap();
        let mut booster = Booster::new(&[&data]).unwrap();
        for (k, v) in [("max_depth", "3"), ("nthread", "1"), ("seed", "0")] {
            booster.set_param(k, v).unwrap();
        }
        for i in 0..3 {
            booster.update(i, &data).unwrap();
        }
        let json = serde_json::from_slice(&booster.save_json().unwrap()).unwrap();
        (json, booster.save_ubjson().unwrap())
    }

    /// What XGBoost does with a model that passed the checks: load it and predict, which must
    /// not crash or hang (an error is fine).
    fn evaluate(bytes: &[u8]) {
        let Ok(booster) = Booster::load(bytes, &[]) else {
            return;
        };
        let names: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let rows = [0.5, f32::NAN, 3.0, 9.0, 1.0, -2.0];
        if let Ok(data) = Matrix::dense(&rows, 2, &names) {
            let _ = booster.predict(&data);
        }
    }

    #[test]
    fn a_valid_model_passes_as_json_and_as_ubjson() {
        let (json, ubj) = valid_model();
        check_model(&serde_json::to_vec(&json).unwrap()).unwrap();
        check_model(&ubj).unwrap();
        // The UBJSON reader sees what the JSON says.
        let (from_ubj, from_json) = (
            parse(&ubj).unwrap(),
            parse(&serde_json::to_vec(&json).unwrap()).unwrap(),
        );
        let trees = |n: &Node| {
            n.at("learner/gradient_booster/model/tree_info")
                .unwrap()
                .ints()
        };
        assert_eq!(trees(&from_ubj), trees(&from_json));
    }

    fn edited(model: &Value, pointer: &str, value: Value) -> Vec<u8> {
        let mut model = model.clone();
        *model.pointer_mut(pointer).unwrap() = value;
        serde_json::to_vec(&model).unwrap()
    }

    /// Edits of a valid model that must be refused: JSON pointer (`TREE/`: the first tree), the
    /// value written there (JSON), and what the refusal must say.
    const HOSTILE_EDITS: [(&str, &str, &str); 15] = [
        ("TREE/left_children/0", "999", "out of range"),
        ("TREE/left_children/0", "0", "out of range"),
        ("TREE/right_children/0", "1", "reached twice"),
        ("TREE/split_indices/0", "3", "splits on feature 3"),
        ("TREE/split_type/0", "1", "categorical"),
        // Found by the fuzz test below with the checks off: XGBoost reads the index as
        // unsigned (feature 4294967295) and the prediction crashed the process (SIGSEGV).
        ("TREE/split_indices/0", "-1", "splits on feature -1"),
        ("TREE/parents/1", "2", "parent is 2"),
        ("TREE/tree_param/num_nodes", "\"4000000000\"", "more than"),
        (
            "/learner/learner_model_param/num_feature",
            "\"1\"",
            "more than the model's 1",
        ),
        ("TREE/tree_param/size_leaf_vector", "\"3\"", "vector leaves"),
        (
            "/learner/learner_model_param/num_feature",
            "\"2\"",
            "more than the model's 2",
        ),
        (
            "/learner/learner_model_param/num_feature",
            "\"9999999999\"",
            "more than",
        ),
        (
            "/learner/gradient_booster/model/gbtree_model_param/num_trees",
            "\"7\"",
            "num_trees is 7",
        ),
        (
            "/learner/gradient_booster/name",
            "\"gblinear\"",
            "only tree models",
        ),
        (
            "/learner/gradient_booster/model/tree_info/1",
            "5",
            "tree_info",
        ),
    ];

    #[test]
    fn hostile_structures_are_refused_with_what_is_wrong() {
        let (model, _) = valid_model();
        for (pointer, value, expected) in HOSTILE_EDITS {
            let pointer = pointer.replace("TREE/", "/learner/gradient_booster/model/trees/0/");
            let value: Value = serde_json::from_str(value).unwrap();
            let error = check_model(&edited(&model, &pointer, value.clone()))
                .expect_err(&format!("{pointer} = {value} refused"));
            assert!(error.contains(expected), "{pointer} = {value}: {error}");
        }
        for bytes in [
            &b""[..],
            b"{",
            b"[1, 2]",
            b"{\"learner\": {}}",
            b"{L\xff\xff\xff\xff\xff\xff\xff\xff",
        ] {
            assert!(check_model(bytes).is_err(), "{bytes:?}");
        }
    }

    /// A tiny seeded generator (xorshift64): the same mutations on every run.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    /// Every JSON pointer in `value`.
    fn pointers(value: &Value, at: String, out: &mut Vec<String>) {
        match value {
            Value::Object(map) => map
                .iter()
                .for_each(|(k, v)| pointers(v, format!("{at}/{k}"), out)),
            Value::Array(items) => items
                .iter()
                .enumerate()
                .for_each(|(i, v)| pointers(v, format!("{at}/{i}"), out)),
            _ => {}
        }
        out.push(at);
    }

    fn interesting(rng: &mut Rng) -> Value {
        let values = [
            json!(-1),
            json!(0),
            json!(1),
            json!(2),
            json!(3),
            json!(-2),
            json!(2147483647),
            json!(-2147483648),
            json!(4294967296u64),
            json!(1e30),
            json!(-0.5),
            json!(null),
            json!("0"),
            json!("3"),
            json!("-1"),
            json!("99999999999"),
            json!("gblinear"),
            json!("dart"),
            json!("multi:softprob"),
            json!([]),
            json!({}),
            json!(true),
        ];
        values[rng.below(values.len())].clone()
    }

    fn mutate(model: &Value, rng: &mut Rng) -> Value {
        let mut model = model.clone();
        let mut all = Vec::new();
        pointers(&model, String::new(), &mut all);
        for _ in 0..1 + rng.below(3) {
            let pointer = &all[rng.below(all.len())];
            let Some(target) = model.pointer_mut(pointer) else {
                continue;
            };
            match (rng.below(4), target) {
                (0, Value::Array(items)) if !items.is_empty() => {
                    items.remove(rng.below(items.len()));
                }
                (1, Value::Array(items)) if !items.is_empty() => {
                    let copy = items[rng.below(items.len())].clone();
                    items.push(copy);
                }
                (2, Value::Object(map)) if !map.is_empty() => {
                    let key = map.keys().nth(rng.below(map.len())).unwrap().clone();
                    map.remove(&key);
                }
                (_, target) => *target = interesting(rng),
            }
        }
        model
    }

    /// Fuzzes the import check with a few hundred mutations of a valid model (JSON edits, and
    /// byte flips and cuts of its UBJSON): the check never panics, and whatever passes it is
    /// evaluated by XGBoost without crashing or hanging the process.
    #[test]
    fn mutated_models_are_refused_or_evaluated_safely() {
        let (model, ubj) = valid_model();
        let mut rng = Rng(0x5eed_1234_abcd_9876);
        let (mut passed, mut refused) = (0, 0);
        for _ in 0..400 {
            let bytes = serde_json::to_vec(&mutate(&model, &mut rng)).unwrap();
            match check_model(&bytes) {
                Ok(()) => {
                    passed += 1;
                    evaluate(&bytes);
                }
                Err(_) => refused += 1,
            }
        }
        for _ in 0..200 {
            let mut bytes = ubj.clone();
            match rng.below(3) {
                0 => bytes.truncate(rng.below(bytes.len())),
                _ => {
                    for _ in 0..1 + rng.below(4) {
                        let i = rng.below(bytes.len());
                        bytes[i] = rng.next() as u8;
                    }
                }
            }
            match check_model(&bytes) {
                Ok(()) => {
                    passed += 1;
                    evaluate(&bytes);
                }
                Err(_) => refused += 1,
            }
        }
        println!("{passed} mutations passed the check and were evaluated, {refused} refused");
        assert!(passed > 50 && refused > 50, "{passed} / {refused}");
    }
}
