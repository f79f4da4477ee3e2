use super::values::{from_json, string};
use super::*;
use serde_json::json;

fn engine(files: &[(&str, &str)]) -> Result<Engine, RenderError> {
    let (partials, templates): (Vec<_>, Vec<_>) = files
        .iter()
        .map(|(n, t)| (n.to_string(), t.to_string()))
        .partition(|(n, _)| n.rsplit('/').next().is_some_and(|b| b.starts_with('_')));
    Engine::new(&partials, &templates)
}

fn render(files: &[(&str, &str)], data: serde_json::Value) -> Result<String, RenderError> {
    let e = engine(files)?;
    e.render(files.last().unwrap().0, &from_json(&data))
}

#[test]
fn include_from_helpers_printf_default_and_a_disabled_branch() {
    let out = render(
        &[
            (
                "app/templates/_helpers.tpl",
                r#"{{- define "app.image" -}}
{{ printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}"#,
            ),
            (
                "app/templates/deployment.yaml",
                r#"image: {{ include "app.image" . | quote }}
{{- if .Values.sidecar.enabled }}
sidecar: {{ .Values.sidecar.image }}
{{- end }}
name: {{ .Release.Name | trunc 3 | trimSuffix "-" }}"#,
            ),
        ],
        json!({
            "Values": {"image": {"repository": "quay.io/app", "tag": ""}, "sidecar": {"enabled": false, "image": "quay.io/side:1"}},
            "Chart": {"AppVersion": "1.2.3"},
            "Release": {"Name": "ab-cdef"},
        }),
    )
    .unwrap();
    assert_eq!(out, "image: \"quay.io/app:1.2.3\"\nname: ab");
}

#[test]
fn a_function_the_engine_has_not_got_is_an_error_with_its_line() {
    let e = engine(&[(
        "app/templates/cm.yaml",
        "a: 1\nb: {{ .Values.x }}\nc: {{ genCA \"x\" 365 }}\n",
    )])
    .err()
    .unwrap();
    assert_eq!((e.file.as_str(), e.line), ("app/templates/cm.yaml", 3));
    assert!(e.message.contains("\"genCA\""), "{e}");
}

#[test]
fn a_syntax_error_names_file_and_line() {
    let e = engine(&[("app/templates/cm.yaml", "a: 1\n\nb: {{ .Values.x ")])
        .err()
        .unwrap();
    assert_eq!(
        (e.file.as_str(), e.line),
        ("app/templates/cm.yaml", 3),
        "{e}"
    );
}

#[test]
fn an_execution_error_is_located_inside_the_branch_that_ran() {
    let tpl = "kind: A\n{{- range .Values.items }}\nx: {{ . }}\n{{- if eq . 2 }}\n{{- if true }}\ny: {{ required \"items must not hold 2\" nil }}\n{{- end }}\n{{- end }}\n{{- end }}\n";
    let e = render(
        &[("app/templates/a.yaml", tpl)],
        json!({"Values": {"items": [1, 2]}}),
    )
    .err()
    .unwrap();
    assert_eq!(e.line, 6, "{e}");
    assert_eq!(e.message, "items must not hold 2");
    // The else arm of a branch too.
    let tpl = "{{ if .Values.on }}\nok\n{{ else }}\n\n{{ fail \"turned off\" }}\n{{ end }}";
    let e = render(
        &[("app/templates/b.yaml", tpl)],
        json!({"Values": {"on": false}}),
    )
    .err()
    .unwrap();
    assert_eq!((e.line, e.message.as_str()), (5, "turned off"));
    // And a failing condition is its own line.
    let tpl = "a\n{{ if required \"cond\" .Values.missing }}x{{ end }}";
    let e = render(&[("app/templates/c.yaml", tpl)], json!({"Values": {}}))
        .err()
        .unwrap();
    assert_eq!(e.line, 2);
}

#[test]
fn set_on_a_variable_changes_the_variable_as_in_go() {
    let out = render(
        &[(
            "app/templates/a.yaml",
            r#"{{- $d := dict "a" 1 }}{{- $_ := set $d "b" 2 }}{{- $_ := unset $d "a" }}{{ toJson $d }}"#,
        )],
        json!({}),
    )
    .unwrap();
    assert_eq!(out, r#"{"b":2}"#);
}

#[test]
fn methods_of_capabilities_and_files() {
    let out = render(
        &[(
            "app/templates/a.yaml",
            r#"{{ if .Capabilities.APIVersions.Has "networking.k8s.io/v1" }}v1{{ else }}beta{{ end }} {{ .Files.Get "conf/a.txt" | trim }} {{ range $p, $_ := .Files.Glob "conf/*.txt" }}{{ $p }},{{ end }} {{ .Values.Get }}"#,
        )],
        json!({
            "Capabilities": {"APIVersions": ["v1", "networking.k8s.io/v1"]},
            "Files": {"conf/a.txt": " hello \n", "conf/b.txt": "", "conf/sub/c.txt": ""},
            "Values": {"Get": "field"},
        }),
    )
    .unwrap();
    assert_eq!(out, "v1 hello conf/a.txt,conf/b.txt, field");
}

#[test]
fn to_yaml_and_nindent_give_helms_layout() {
    let out = render(
        &[(
            "app/templates/a.yaml",
            "spec:\n  resources: {{- toYaml .Values.r | nindent 4 }}\n  empty: {{ toYaml .Values.none }}",
        )],
        json!({"Values": {"r": {"limits": {"cpu": "1"}, "args": ["a", "b"]}, "none": {}}}),
    )
    .unwrap();
    assert_eq!(
        out,
        "spec:\n  resources:\n    args:\n    - a\n    - b\n    limits:\n      cpu: '1'\n  empty: {}"
    );
}

#[test]
fn tpl_renders_a_value_with_the_charts_defines() {
    let out = render(
        &[
            (
                "app/templates/_h.tpl",
                r#"{{ define "reg" }}quay.io{{ end }}"#,
            ),
            ("app/templates/a.yaml", r#"{{ tpl .Values.image . }}"#),
        ],
        json!({"Values": {"image": "{{ include \"reg\" . }}/app:{{ .Values.tag }}", "tag": "v1"}}),
    )
    .unwrap();
    assert_eq!(out, "quay.io/app:v1");
}

#[test]
fn a_template_that_includes_itself_stops_with_an_error() {
    let e = render(
        &[
            (
                "app/templates/_h.tpl",
                r#"{{ define "loop" }}{{ include "loop" . }}{{ end }}"#,
            ),
            ("app/templates/a.yaml", "a\n{{ include \"loop\" . }}"),
        ],
        json!({}),
    )
    .err()
    .unwrap();
    assert!(e.message.contains("nested more than"), "{e}");
    assert_eq!(e.line, 2);
}

#[test]
fn semver_compare_reads_the_constraints_charts_write() {
    let cases = [
        (">=1.19-0", "v1.31.0", true),
        ("<1.19-0", "v1.31.0", false),
        (">= 1.14, < 1.19", "1.16.2", true),
        ("^1.2", "1.9.0", true),
        ("^1.2", "2.0.0", false),
        ("^0.2", "0.2.5", true),
        ("^0.2", "0.3.0", false),
        ("^0.0.3", "0.0.4", false),
        ("~1.2.3", "1.2.9", true),
        ("~1.2.3", "1.3.0", false),
        ("~1", "1.9.0", true),
        ("~1", "2.0.0", false),
        ("<1.0 || >=1.30", "v1.31.0", true),
        ("1.31.0", "v1.31.0", true),
        ("1.2.x", "1.2.9", true),
        ("6.5", "6.5.3", true),
        ("6.5", "6.6.0", false),
        ("!=6.5", "6.5.3", false),
        (">1.2", "1.2.9", false),
        (">1.2", "1.3.0", true),
        (">1.2.3", "1.2.4", true),
        ("<=1.2", "1.2.9", true),
        ("<=1.2.3", "1.2.3", true),
        ("<=1.2.3", "1.2.4", false),
        ("*", "3.0.0", true),
        // A prerelease only where a term names one.
        (">=6", "9.0.0-rc.1", false),
        (">=9.0.0-0", "9.0.0-rc.1", true),
        ("<1.0.0-rc.2", "1.0.0-rc.1", true),
        (">1.0.0-rc.1", "1.0.0-rc.2", true),
        // Ranges end before the next version's prereleases.
        ("~1.2.3-0", "1.3.0-rc.1", false),
        ("^1.2.3-0", "2.0.0-rc.1", false),
        ("^1.2.3-0", "1.9.0-rc.1", true),
        // Build metadata is not a prerelease, even with a `-` in it.
        (">=1.0", "1.2.3+build-1", true),
    ];
    for (c, v, want) in cases {
        assert_eq!(funcs::semver_compare(c, v).unwrap(), want, "{c} {v}");
    }
    assert!(funcs::semver_compare(">=x.y", "1.0.0").is_err());
}

#[test]
fn missing_values_print_as_nothing_and_quote_escapes_as_go() {
    let out = render(
        &[(
            "app/templates/a.yaml",
            r#"a: {{ .Values.nope }}|{{ quote "a\"b" }}|{{ squote 1 }}"#,
        )],
        json!({"Values": {}}),
    )
    .unwrap();
    assert_eq!(out, r#"a: |"a\"b"|'1'"#);
    assert_eq!(string("x"), gotmpl::Value::from("x"));
}

#[test]
fn sprig_functions_give_sprigs_results() {
    let cases = [
        (r#"{{ "Hello World" | upper }}"#, "HELLO WORLD"),
        (r#"{{ "hello world-x" | title }}"#, "Hello World-X"),
        (
            r#"{{ "  a  " | trim }}|{{ trimAll "$" "$5.00$" }}|{{ trimPrefix "v" "v1.2" }}"#,
            "a|5.00|1.2",
        ),
        (
            r#"{{ trunc -3 "abcdef" }}|{{ substr 1 3 "abcdef" }}|{{ repeat 3 "ab" }}"#,
            "def|bc|ababab",
        ),
        (
            r#"{{ replace "." "-" "a.b.c" }}|{{ nospace "a b  c" }}|{{ cat "a" nil "b" }}"#,
            "a-b-c|abc|a b",
        ),
        (r#"{{ indent 2 "a\nb" }}"#, "  a\n  b"),
        (
            r#"{{ list "a" "b" | join "," }}|{{ splitList "," "a,b" | last }}|{{ (split "," "x,y")._1 }}"#,
            "a,b|b|y",
        ),
        (
            r#"{{ b64enc "airlock" }}|{{ b64dec "YWlybG9jaw==" }}"#,
            "YWlybG9jaw==|airlock",
        ),
        (
            r#"{{ sha256sum "" }}"#,
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        ),
        (
            r#"{{ regexMatch "^v[0-9]+$" "v12" }}|{{ regexReplaceAll "a(x*)b" "-ab-axxb-" "${1}W" }}|{{ regexFind "[0-9]+" "ab12cd" }}"#,
            "true|-W-xxW-|12",
        ),
        (
            r#"{{ default "d" "" }}|{{ default "d" "v" }}|{{ empty list }}|{{ coalesce "" nil "c" }}|{{ ternary "y" "n" false }}"#,
            "d|v|true|c|n",
        ),
        (
            r#"{{ $l := list 3 1 2 }}{{ first $l }}{{ rest $l | last }}{{ initial $l | len }}{{ append $l 4 | len }}{{ prepend $l 0 | first }}"#,
            "32240",
        ),
        (
            r#"{{ concat (list 1) (list 2 3) | len }}|{{ has 2 (list 1 2) }}|{{ without (list 1 2 1) 1 | len }}|{{ uniq (list 1 1 2) | len }}|{{ compact (list "" "a") | len }}"#,
            "3|true|1|2|1",
        ),
        (
            r#"{{ sortAlpha (list "b" "a") | join "" }}|{{ reverse (list 1 2) | first }}|{{ until 3 | len }}"#,
            "ab|2|3",
        ),
        (
            r#"{{ $d := dict "a" 1 "b" 2 }}{{ get $d "a" }}{{ hasKey $d "c" }}{{ keys $d | sortAlpha | join "" }}{{ pick $d "b" | keys | first }}{{ omit $d "b" | keys | first }}"#,
            "1falseabba",
        ),
        (
            r#"{{ $m := merge (dict "a" 1) (dict "a" 2 "b" 3) }}{{ $m.a }}{{ $m.b }}{{ $o := mergeOverwrite (dict "a" 1) (dict "a" 2) }}{{ $o.a }}"#,
            "132",
        ),
        (
            r#"{{ dig "a" "b" "none" (dict "a" (dict "b" "found")) }}|{{ dig "a" "x" "none" (dict "a" (dict)) }}"#,
            "found|none",
        ),
        (
            r#"{{ kindOf "a" }}|{{ kindIs "map" (dict) }}|{{ kindIs "int" 3 }}|{{ typeOf (list) }}|{{ kindOf nil }}"#,
            "string|true|true|[]interface {}|invalid",
        ),
        (
            r#"{{ int "42" | add 1 }}|{{ sub 5 2 }}|{{ mul 2 3 4 }}|{{ div 7 2 }}|{{ mod 7 2 }}|{{ max 1 5 3 }}|{{ min 4 2 }}|{{ add1 9 }}"#,
            "43|3|24|3|1|5|2|10",
        ),
        (
            r#"{{ toJson (dict "a" (list 1 "x")) }}|{{ (fromYaml "a: b").a }}|{{ (fromJson "{\"n\": 1}").n }}|{{ (fromYaml "[").Error | empty }}"#,
            r#"{"a":[1,"x"]}|b|1|false"#,
        ),
        (
            r#"{{ randAlphaNum 4 | len }}|{{ uuidv4 | len }}|{{ lookup "v1" "Secret" "ns" "x" | len }}"#,
            "4|36|0",
        ),
        (
            r#"{{ semverCompare ">=1.19-0" "v1.31.0" }}|{{ printf "%s-%d" "a" 3 }}|{{ float64 "1.5" }}|{{ floor 1.7 }}"#,
            "true|a-3|1.5|1",
        ),
    ];
    for (tpl, want) in cases {
        let out = render(&[("c/templates/t.yaml", tpl)], json!({}))
            .unwrap_or_else(|e| panic!("{tpl}: {e}"));
        assert_eq!(out, want, "{tpl}");
    }
}

#[test]
fn a_method_on_a_pipelines_result_and_a_kept_merge_result() {
    let out = render(
        &[(
            "app/templates/a.yaml",
            r#"{{ (.Files.Glob "conf/*.txt").AsConfig }}
{{- $a := dict "x" 1 }}{{ $m := merge $a (dict "y" 2) }}
m={{ toJson $m }}"#,
        )],
        json!({"Files": {"conf/a.txt": "hello", "other/b.txt": "no"}}),
    )
    .unwrap();
    assert_eq!(out, "a.txt: hello\nm={\"x\":1,\"y\":2}");
}

#[test]
fn counts_a_hostile_chart_could_blow_up_are_refused() {
    for tpl in [
        r#"{{ repeat 100000000 "xxxxxxxxxx" }}"#,
        "{{ until 1000000000 | len }}",
        "{{ randAlphaNum 1000000000 }}",
        r#"{{ indent 100000000 "x" }}"#,
        "{{ range $i := until 100000 }}{{ range $j := until 100000 }}{{ end }}{{ end }}",
    ] {
        let e = render(&[("c/templates/t.yaml", tpl)], json!({})).unwrap_err();
        assert_eq!(e.line, 1, "{tpl}: {e}");
    }
}
