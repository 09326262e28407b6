//! Implements a world that is not toolgate's: loading it must fail.

wit_bindgen::generate!({
    inline: "
        package hostile:wrong-world;
        world other {
            export evaluate: func(tool: string) -> bool;
        }
    ",
});

struct Wrong;

impl Guest for Wrong {
    fn evaluate(tool: String) -> bool {
        tool.is_empty()
    }
}

export!(Wrong);
