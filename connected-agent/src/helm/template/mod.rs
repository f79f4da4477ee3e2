//! Helm's template language: Go's `text/template` (the `gotmpl` crate parses and
//! executes it) with the functions charts call, Sprig's and Helm's own (in
//! [`funcs`]), and the few methods charts call on Helm's objects
//! (`.Capabilities.APIVersions.Has`, `.Files.Get`, ...).
//!
//! `gotmpl` gives positions on parse errors only; an execution error (a
//! `required` value, a type mismatch) carries none. A chart author needs the line,
//! so [`Engine::render`] finds it: it re-executes ever shorter prefixes of the
//! failing template, descending into the branch that fails, until one action is
//! left (see [`locate`]). That costs a few executions, on the error path only.
//!
//! What the engine cannot do it refuses before executing anything: a function it
//! does not have is an error naming the file and line (as Go's parser does), never
//! an empty string in the output.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock, Weak};

use gotmpl::parse::{CommandNode, Expr, ListNode, Node, Parser, PipeNode, SmolStr};
use gotmpl::{Template, TemplateError, Value};

pub mod funcs;
pub mod values;

/// Where a template could not be parsed or executed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct RenderError {
    /// The template's name: the file's path inside the chart archive.
    pub file: String,
    /// 1-based line in that file (0 when the engine could not tell).
    pub line: usize,
    /// What went wrong.
    pub message: String,
}

/// How many `range` iterations one execution may make (`gotmpl` allows ten
/// million): a chart that loops that long is broken or hostile.
const MAX_RANGE_ITERATIONS: u64 = 1_000_000;

/// The name under which the last failing template is re-executed while its
/// error is located; not a name a chart file can have (they contain `/`).
const PROBE: &str = "airlock probe";

/// Every template of a chart (with its subcharts), parsed into one set so that
/// `include` and `template` find a `define` from any file, as in Helm.
pub struct Engine {
    /// The finished set; `include` and `tpl` hold a weak reference to it.
    set: Arc<OnceLock<Template>>,
    /// The files that render, by name.
    files: BTreeMap<String, ListNode>,
}

impl Engine {
    /// Parses `partials` (files whose `define`s others use, rendering nothing)
    /// and `templates` (files that render), each `(name, text)`. Later
    /// definitions of a name replace earlier ones, so callers list a subchart's
    /// files before its parent's, as Helm orders them.
    pub fn new(
        partials: &[(String, String)],
        templates: &[(String, String)],
    ) -> Result<Engine, RenderError> {
        let set = Arc::new(OnceLock::new());
        let helpers = funcs::Helpers {
            set: Arc::downgrade(&set),
        };
        let known = funcs::all(&helpers);
        let mut tmpl = Template::new("")
            .funcs(known.clone())
            .max_range_iters(MAX_RANGE_ITERATIONS);
        let mut files = BTreeMap::new();
        for (i, (name, text)) in partials.iter().chain(templates).enumerate() {
            let (tree, defines) = parse(name, text, Some(&known))?;
            for d in defines {
                tmpl = tmpl.add_parse_tree(d.name.as_str(), d.body);
            }
            tmpl = tmpl.add_parse_tree(name, tree.clone());
            if i >= partials.len() {
                files.insert(name.clone(), tree);
            }
        }
        set.set(tmpl)
            .unwrap_or_else(|_| unreachable!("the set is filled once, here"));
        Ok(Engine { set, files })
    }

    /// Renders the file `name` with `data` as dot. A value that is missing prints
    /// as nothing, as in Helm (which replaces Go's `<no value>`).
    pub fn render(&self, name: &str, data: &Value) -> Result<String, RenderError> {
        let set = self.set.get().expect("Engine::new fills the set");
        match set.execute_template_to_string(name, data) {
            Ok(out) => Ok(no_value(out)),
            Err(e) => {
                let tree = self.files.get(name).ok_or_else(|| RenderError {
                    file: name.to_string(),
                    line: 0,
                    message: "no such template".into(),
                })?;
                let fails = |probe: &ListNode| {
                    set.clone()
                        .add_parse_tree(PROBE, probe.clone())
                        .execute_template_to_string(PROBE, data)
                        .is_err()
                };
                Err(RenderError {
                    file: name.to_string(),
                    line: locate(tree, &fails),
                    message: message(&e),
                })
            }
        }
    }
}

/// Helm prints a missing value as nothing where Go prints `<no value>`.
pub(crate) fn no_value(out: String) -> String {
    if out.contains("<no value>") {
        out.replace("<no value>", "")
    } else {
        out
    }
}

/// Parses one file, rewrites method calls on Helm's objects into calls of
/// [`funcs::METHOD`] and mutations into assignments ([`assign_back`]), and
/// refuses functions that `known` (when given) has not got.
fn parse(
    name: &str,
    text: &str,
    known: Option<&gotmpl::FuncMap>,
) -> Result<(ListNode, Vec<gotmpl::parse::DefineNode>), RenderError> {
    let (mut tree, mut defines) = Parser::with_name(Some(name), text, "{{", "}}")
        .and_then(Parser::parse)
        .map_err(|e| parse_error(name, e))?;
    let check = |list: &mut ListNode| -> Result<(), RenderError> {
        let mut failure = None;
        visit_list(list, &mut assign_back, &mut |cmd| {
            rewrite_method(cmd);
            if failure.is_none()
                && let Some(known) = known
            {
                failure = unknown_function(cmd, known).map(|(line, f)| RenderError {
                    file: name.to_string(),
                    line,
                    message: format!(
                        "function {f:?} is not one Airlock's chart renderer has (see docs/helm.md for the list); the chart cannot be rendered"
                    ),
                });
            }
        });
        failure.map_or(Ok(()), Err)
    };
    check(&mut tree)?;
    for d in &mut defines {
        check(&mut d.body)?;
    }
    Ok((tree, defines))
}

fn parse_error(name: &str, e: TemplateError) -> RenderError {
    match e {
        TemplateError::Parse { line, message, .. } | TemplateError::Lex { line, message, .. } => {
            RenderError {
                file: name.to_string(),
                line,
                message,
            }
        }
        other => RenderError {
            file: name.to_string(),
            line: 0,
            message: other.to_string(),
        },
    }
}

/// The message of an execution error, without `gotmpl`'s prefix.
fn message(e: &TemplateError) -> String {
    match e {
        TemplateError::Exec(m) => m.clone(),
        other => other.to_string(),
    }
}

/// Calls `on_action` on the pipeline of every action of `list` (`{{ … }}` that
/// prints or declares) and `f` on every command, nested pipelines included.
fn visit_list(
    list: &mut ListNode,
    on_action: &mut dyn FnMut(&mut PipeNode),
    f: &mut dyn FnMut(&mut CommandNode),
) {
    for node in &mut list.nodes {
        match node {
            Node::List(l) => visit_list(l, on_action, f),
            Node::Action(a) => {
                on_action(&mut a.pipe);
                visit_pipe(&mut a.pipe, f);
            }
            Node::If(b) | Node::Range(b) | Node::With(b) => {
                visit_pipe(&mut b.pipe, f);
                visit_list(&mut b.body, on_action, f);
                if let Some(e) = &mut b.else_body {
                    visit_list(e, on_action, f);
                }
            }
            Node::Template(t) => {
                if let Some(p) = &mut t.pipe {
                    visit_pipe(p, f);
                }
            }
            Node::Define(d) => visit_list(&mut d.body, on_action, f),
            Node::Text(_) | Node::Break(_) | Node::Continue(_) => {}
        }
    }
}

fn visit_pipe(pipe: &mut PipeNode, f: &mut dyn FnMut(&mut CommandNode)) {
    for cmd in &mut pipe.commands {
        f(cmd);
        for arg in &mut cmd.args {
            visit_expr(arg, f);
        }
    }
}

fn visit_expr(expr: &mut Expr, f: &mut dyn FnMut(&mut CommandNode)) {
    match expr {
        Expr::Pipe(_, p) => visit_pipe(p, f),
        Expr::Chain(_, inner, _) => visit_expr(inner, f),
        _ => {}
    }
}

/// Sprig's `set`, `unset`, `merge` and `mergeOverwrite` change a map in place,
/// and charts call them for that alone: `{{ $_ := set $d "k" "v" }}`. The
/// engine's maps are values, so such an action (`pipe`) on a variable, its result thrown
/// away in `$_`, becomes `{{ $d = set $d "k" "v" }}`, which leaves the variable
/// as Go would. A result that is kept (`$m := merge $a $b`) is left alone.
fn assign_back(pipe: &mut PipeNode) {
    if let ([d], false, [cmd]) = (&pipe.decl[..], pipe.is_assign, &pipe.commands[..])
        && d.as_str() == "$_"
        && let [Expr::Identifier(_, f), Expr::Variable(_, var, fields), ..] = &cmd.args[..]
        && fields.is_empty()
        && matches!(f.as_str(), "set" | "unset" | "merge" | "mergeOverwrite")
    {
        pipe.decl = vec![var.clone()];
        pipe.is_assign = true;
    }
}

/// `.Files.Get "x"` is a method call in Go; `gotmpl` has no methods, so the
/// command becomes `helmMethod "Get" .Files "x"` (see [`funcs::METHOD`]).
fn rewrite_method(cmd: &mut CommandNode) {
    let Some(first) = cmd.args.first() else {
        return;
    };
    let (pos, receiver, method) = match first {
        Expr::Field(pos, chain) if chain.len() >= 2 => {
            let method = chain[chain.len() - 1].clone();
            (
                *pos,
                Expr::Field(*pos, chain[..chain.len() - 1].to_vec()),
                method,
            )
        }
        Expr::Variable(pos, var, chain) if !chain.is_empty() => {
            let method = chain[chain.len() - 1].clone();
            (
                *pos,
                Expr::Variable(*pos, var.clone(), chain[..chain.len() - 1].to_vec()),
                method,
            )
        }
        // `(.Files.Glob "x").AsConfig`
        Expr::Chain(pos, inner, chain) if !chain.is_empty() => {
            let method = chain[chain.len() - 1].clone();
            let receiver = match chain.len() {
                1 => (**inner).clone(),
                n => Expr::Chain(*pos, inner.clone(), chain[..n - 1].to_vec()),
            };
            (*pos, receiver, method)
        }
        _ => return,
    };
    if !funcs::METHODS.contains(&method.as_str()) {
        return;
    }
    let rest = cmd.args.split_off(1);
    cmd.args = [
        Expr::Identifier(pos, SmolStr::new(funcs::METHOD)),
        Expr::String(pos, Arc::from(method.as_str())),
        receiver,
    ]
    .into_iter()
    .chain(rest)
    .collect();
}

/// The first function `cmd` calls that `known` does not have, with its line.
fn unknown_function(cmd: &CommandNode, known: &gotmpl::FuncMap) -> Option<(usize, String)> {
    cmd.args.iter().find_map(|arg| {
        let name = match arg {
            Expr::Identifier(_, n) => n,
            Expr::Chain(_, inner, _) => match inner.as_ref() {
                Expr::Identifier(_, n) => n,
                _ => return None,
            },
            _ => return None,
        };
        (!known.contains_key(name.as_str()) && !funcs::GO_BUILTINS.contains(&name.as_str()))
            .then(|| (arg.pos().line, name.to_string()))
    })
}

/// The line of the action in `tree` whose execution fails, given `fails`, which
/// executes a changed copy of `tree`. Execution is sequential, so if a prefix of a
/// list fails every longer one does: the first failing prefix ends at the node at
/// fault. For a branch node, the fault is in its condition or in the body or the
/// `else` it took, and the search goes on there. Returns 0 when the fault cannot
/// be pinned (the tree does not fail on its own).
pub(crate) fn locate(tree: &ListNode, fails: &dyn Fn(&ListNode) -> bool) -> usize {
    // The path from the root: (index in the list, which list of that node's
    // branch to descend into next).
    let mut path: Vec<(usize, Arm)> = Vec::new();
    let mut line = 0;
    loop {
        let list = list_at(tree, &path);
        // Failing prefixes are monotone, so the first one is found by bisection.
        let i = (0..list.nodes.len())
            .collect::<Vec<_>>()
            .partition_point(|&i| !fails(&probe(tree, &path, i, None)));
        if i == list.nodes.len() {
            return line;
        }
        let node = &list.nodes[i];
        line = node_line(node);
        let (Node::If(b) | Node::Range(b) | Node::With(b)) = node else {
            return line;
        };
        // With both arms emptied only the condition runs.
        if fails(&probe(tree, &path, i, Some(Arm::Neither))) {
            return line;
        }
        let arm = if fails(&probe(tree, &path, i, Some(Arm::Body))) || b.else_body.is_none() {
            Arm::Body
        } else {
            Arm::Else
        };
        path.push((i, arm));
    }
}

/// Which list of a branch node the search is in.
#[derive(Debug, Clone, Copy)]
enum Arm {
    Body,
    Else,
    Neither,
}

fn list_at<'a>(tree: &'a ListNode, path: &[(usize, Arm)]) -> &'a ListNode {
    let mut list = tree;
    for &(i, arm) in path {
        let (Node::If(b) | Node::Range(b) | Node::With(b)) = &list.nodes[i] else {
            unreachable!("the path only goes through branch nodes")
        };
        list = match arm {
            Arm::Else => b.else_body.as_ref().expect("the path took an else"),
            _ => &b.body,
        };
    }
    list
}

/// A copy of `tree` cut after node `i` of the list at `path`, each list on the
/// path cut after the node the path goes through; with `keep`, node `i` keeps
/// only that arm.
fn probe(tree: &ListNode, path: &[(usize, Arm)], i: usize, keep: Option<Arm>) -> ListNode {
    let mut steps: Vec<(usize, Option<Arm>)> = path.iter().map(|&(j, a)| (j, Some(a))).collect();
    steps.push((i, keep));
    cut(tree, &steps)
}

fn cut(list: &ListNode, steps: &[(usize, Option<Arm>)]) -> ListNode {
    let Some(&(i, keep)) = steps.first() else {
        return list.clone();
    };
    let mut out = ListNode {
        pos: list.pos,
        nodes: list.nodes[..=i].to_vec(),
    };
    if let (Some(arm), Node::If(b) | Node::Range(b) | Node::With(b)) = (keep, &mut out.nodes[i]) {
        let empty = ListNode {
            pos: b.body.pos,
            nodes: Vec::new(),
        };
        match arm {
            Arm::Body => {
                b.body = cut(&b.body, &steps[1..]);
                b.else_body = b.else_body.as_ref().map(|_| empty);
            }
            Arm::Else => {
                if let Some(e) = &b.else_body {
                    b.else_body = Some(cut(e, &steps[1..]));
                }
                b.body = empty;
            }
            Arm::Neither => {
                b.else_body = b.else_body.as_ref().map(|_| empty.clone());
                b.body = empty;
            }
        }
    }
    out
}

fn node_line(node: &Node) -> usize {
    match node {
        Node::List(l) => l.pos.line,
        Node::Text(t) => t.pos.line,
        Node::Action(a) => a.pos.line,
        Node::If(b) | Node::Range(b) | Node::With(b) => b.pos.line,
        Node::Template(t) => t.pos.line,
        Node::Define(d) => d.pos.line,
        Node::Break(p) | Node::Continue(p) => p.line,
    }
}

/// A weak handle on the finished set, for the functions that execute templates.
fn upgrade(set: &Weak<OnceLock<Template>>) -> Result<Arc<OnceLock<Template>>, TemplateError> {
    set.upgrade()
        .ok_or_else(|| TemplateError::Exec("the chart's templates are gone".into()))
}

#[cfg(test)]
mod tests;
