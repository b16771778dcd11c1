fn main() {
    pyper::init();
}
