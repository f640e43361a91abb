//! Function names as Go prints them.

/// A function name as Go prints it (`runtime.funcNameForPrint`, which
/// `runtime.CallersFrames` and so pprof use): generic shapes become `[...]`,
/// and a generic method of a generic type `T[...].m[...]`.
pub fn name_for_print(name: &str) -> std::borrow::Cow<'_, str> {
    let Some(i) = name.find('[') else {
        return name.into();
    };
    let Some(j) = name.rfind(']') else {
        return name.into();
    };
    if j <= i {
        return name.into();
    }
    let interior = &name[i + 1..j];
    if !interior.contains('[') {
        return format!("{}[...]{}", &name[..i], &name[j + 1..]).into();
    }
    let (mut depth, mut rbr, mut lbr) = (1i32, None, None);
    for (k, c) in interior.char_indices() {
        if c == '[' {
            depth += 1;
            if depth != 1 {
                continue;
            }
            lbr = Some(k);
            break;
        }
        if c == ']' {
            depth -= 1;
            if depth < 0 {
                break;
            }
            if depth == 0 {
                rbr = Some(k);
            }
        }
    }
    if depth == 1 {
        match (rbr, lbr) {
            (Some(r), Some(l)) if l > r => {
                return format!(
                    "{}[...]{}[...]{}",
                    &name[..i],
                    &interior[r + 1..l],
                    &name[j + 1..]
                )
                .into();
            }
            (None, None) => return format!("{}[...]{}", &name[..i], &name[j + 1..]).into(),
            _ => {}
        }
    }
    name.into()
}
